"""ypws: the image web server and cache node (photos and thumbnails by URL, with Yupoo's rules)."""
