"""The pages people see: a user's gallery, a photo page and the upload page, as plain HTML.

Pure functions from records to HTML strings (every value escaped), no HTTP.
Image URLs are relative (``/photos/...?v=``), so the pages work through the
hashproxy and straight from one ypws node alike; ``srcset`` lists each size
with its real width (``magickd.geometry``), so browsers pick the smallest
rendition that is sharp enough.
"""

from __future__ import annotations

import json
from html import escape

from cluster.config import Config, SizeProfile
from magickd.geometry import box_for
from storage.records import PhotoRecord, original_url, rendition_url

#: sizes offered in a gallery thumbnail's srcset, and on the photo page
GALLERY_SIZES = ("thumb", "small", "medium")
PHOTO_SIZES = ("medium", "large", "xlarge")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{background:#222;padding:.6em 1em}header a{color:#fff;margin-right:1em;text-decoration:none}
main{padding:1em}ul.gallery{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:12px}
ul.gallery li{width:240px;text-align:center}ul.gallery img{max-width:100%;height:auto;background:#ddd}
figure img{max-width:100%;height:auto}.meta{color:#666}form p{margin:.6em 0}
#result img{display:block;margin-top:.5em}.error{color:#b00}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        "<body><header><a href=\"/upload\">Upload</a></header>\n"
        f"<main>{body}</main></body></html>\n"
    )


def _srcset(cfg: Config, record: PhotoRecord, names: tuple[str, ...]) -> tuple[str, SizeProfile | None, tuple[int, int]]:
    """srcset over the profiles that exist, the largest of them, and its (w, h)."""
    parts, last, dims = [], None, (record.width, record.height)
    for name in names:
        profile = cfg.size(name)
        if profile is None:
            continue
        box = box_for(profile, record.width, record.height)
        if last is not None and box.out_w <= dims[0]:
            continue  # the source is small: a larger size would be the same pixels
        parts.append(f"{rendition_url('', record.ref, profile)} {box.out_w}w")
        last, dims = profile, (box.out_w, box.out_h)
    return ", ".join(parts), last, dims


def _thumbs(cfg: Config, records: list[PhotoRecord], paged: bool, owners: bool = False) -> str:
    """A grid of thumbnails linking to each photo page (and, with ``owners``, to each owner's gallery)."""
    items = []
    for rec in records:
        srcset, largest, _ = _srcset(cfg, rec, GALLERY_SIZES)
        small = cfg.size("small") or largest
        if small is None:
            continue
        box = box_for(small, rec.width, rec.height)
        title = rec.title or f"Photo {rec.id}"
        by = f' <span class="meta">by <a href="/u/{escape(rec.owner)}">{escape(rec.owner)}</a></span>' if owners else ""
        items.append(
            f'<li><a href="/p/{escape(rec.owner)}/{escape(rec.id)}">'
            f'<img class="thumb" src="{escape(rendition_url("", rec.ref, small))}" srcset="{escape(srcset)}" '
            f'sizes="240px" width="{box.out_w}" height="{box.out_h}" alt="{escape(title)}" loading="lazy" '
            f'data-photo="{escape(rec.id)}"></a><div>{escape(title)}{by}</div></li>'
        )
    empty = "No older photos." if paged else "No photos yet."
    return f'<ul class="gallery">{"".join(items)}</ul>' if items else f'<p class="meta">{empty}</p>'


def _pager(base: str, older: str | None, paged: bool) -> str:
    nav = []
    if paged:
        nav.append(f'<a href="{escape(base)}">Newest</a>')
    if older:
        nav.append(f'<a rel="next" id="older" href="{escape(base)}?before={escape(older)}">Older photos</a>')
    return f'<nav class="meta">{" · ".join(nav)}</nav>' if nav else ""


def gallery_html(cfg: Config, user: str, records: list[PhotoRecord], older: str | None = None,
                 paged: bool = False) -> str:
    """Thumbnails of a user's public photos, newest first; ``older``: the id the next page starts below."""
    listing = _thumbs(cfg, records, paged)
    return _page(f"{user}'s photos", f"<h1>{escape(user)}</h1>{listing}{_pager(f'/u/{user}', older, paged)}")


def home_html(cfg: Config, records: list[PhotoRecord], older: str | None = None, paged: bool = False) -> str:
    """The site's front page: what it is, and the newest public photos of every user."""
    intro = ('<p class="meta">A photo site: upload your photos, and everyone sees them in the sizes that fit, '
             'from the cache node nearest the URL. <a href="/upload">Upload photos</a>.</p>')
    listing = _thumbs(cfg, records, paged, owners=True)
    return _page("Newest photos", f"<h1>Newest photos</h1>{intro}{listing}{_pager('/', older, paged)}")


def photo_html(cfg: Config, record: PhotoRecord, original_allowed: bool) -> str:
    srcset, largest, (w, h) = _srcset(cfg, record, PHOTO_SIZES)
    title = record.title or f"Photo {record.id}"
    img = ""
    if largest is not None:
        img = (f'<figure><img src="{escape(rendition_url("", record.ref, largest))}" srcset="{escape(srcset)}" '
               f'sizes="(max-width: 1100px) 100vw, 1024px" width="{w}" height="{h}" alt="{escape(title)}"></figure>')
    sizes = []
    for profile in cfg.sizes:
        box = box_for(profile, record.width, record.height)
        sizes.append(f'<a href="{escape(rendition_url("", record.ref, profile))}">{escape(profile.name)}</a> '
                     f'<span class="meta">{box.out_w}&times;{box.out_h}</span>')
    if original_allowed:
        sizes.append(f'<a href="{escape(original_url("", record.ref, record.format))}">original</a> '
                     f'<span class="meta">{record.width}&times;{record.height}</span>')
    facts = [f"by <a href=\"/u/{escape(record.owner)}\">{escape(record.owner)}</a>"]
    if record.taken_at:
        facts.append(f"taken {escape(record.taken_at)}")
    if record.camera:
        facts.append(escape(record.camera))
    body = (f"<h1>{escape(title)}</h1>{img}<p class=\"meta\">{' &middot; '.join(facts)}</p>"
            f"<p>Sizes: {' &middot; '.join(sizes)}</p>")
    return _page(title, body)


def upload_html(upload_url: str) -> str:
    """A form whose script posts multipart to ypfs with the user's token, then links to the gallery."""
    script = UPLOAD_SCRIPT.replace("__UPLOAD_URL__", json.dumps(upload_url or "/upload"))
    body = f"""<h1>Upload a photo</h1>
<form id="upload" enctype="multipart/form-data">
<p><label>Upload token <input type="password" name="token" id="token" required autocomplete="off"></label></p>
<p><label>Photo <input type="file" name="photo" id="photo" accept="image/*" required></label></p>
<p><label>Title <input type="text" name="title" id="title" maxlength="200"></label></p>
<p><label><input type="checkbox" name="private" id="private" value="1"> Private</label></p>
<p><button type="submit" id="submit">Upload</button></p>
</form>
<div id="result" aria-live="polite"></div>
<script>{script}</script>"""
    return _page("Upload a photo", body)


UPLOAD_SCRIPT = r"""
(function () {
  var form = document.getElementById('upload'), result = document.getElementById('result');
  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var data = new FormData();
    data.append('photo', document.getElementById('photo').files[0]);
    data.append('title', document.getElementById('title').value);
    if (document.getElementById('private').checked) data.append('private', '1');
    result.textContent = 'Uploading\u2026';
    fetch(__UPLOAD_URL__, {method: 'POST', body: data,
        headers: {'Authorization': 'Bearer ' + document.getElementById('token').value.trim()}})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (sr) {
        var status = sr[0], j = sr[1];
        result.textContent = '';
        if (status !== 201) {
          result.innerHTML = '<p class="error"></p>';
          result.firstChild.textContent = (j.error || 'error') + ': ' + (j.message || status);
          return;
        }
        var p = document.createElement('p');
        p.id = 'uploaded'; p.dataset.photo = j.id;
        var a = document.createElement('a');
        a.href = '/u/' + encodeURIComponent(j.owner); a.id = 'gallery-link';
        a.textContent = 'Uploaded: see ' + j.owner + "'s photos";
        p.appendChild(a); result.appendChild(p);
        var thumb = j.urls && (j.urls.small || j.urls.thumb);
        if (thumb) {
          var img = document.createElement('img');
          img.src = new URL(thumb, location.href).pathname + new URL(thumb, location.href).search;
          img.alt = 'uploaded photo'; result.appendChild(img);
        }
      })
      .catch(function (e) { result.innerHTML = '<p class="error"></p>'; result.firstChild.textContent = String(e); });
  });
})();
"""
