"""The pages people see: a user's gallery, a photo page and the upload page, as plain HTML.

Pure functions from records to HTML strings (every value escaped), no HTTP.
Image URLs are relative (``/photos/...?v=``), so the pages work through the
hashproxy and straight from one ypws node alike; ``srcset`` lists each size
with its real width (``cluster.profiles.box_for``), so browsers pick the smallest
rendition that is sharp enough.
"""

from __future__ import annotations

import json
import re
from html import escape

from cluster.profiles import SizeProfile, Sizes, box_for
from storage.records import PhotoRecord, original_url, rendition_url

#: sizes offered in a gallery thumbnail's srcset, and on the photo page
GALLERY_SIZES = ("thumb", "small", "medium")
PHOTO_SIZES = ("medium", "large", "xlarge")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{background:#222;padding:.6em 1em}header a{color:#fff;margin-right:1em;text-decoration:none}
main{padding:1em}ul.gallery{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:12px}
ul.gallery li{width:240px;text-align:center}ul.gallery img{max-width:100%;height:auto;background:#ddd}
figure{margin:0 0 1em}img.photo{display:block;max-width:100%;max-height:85vh;width:auto;height:auto}
.meta{color:#666}form p{margin:.6em 0}dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}
dl.facts dd{margin:0}.drop{border:2px dashed #aaa;padding:1em;border-radius:6px}.drop.over{background:#eef}
ul.files{list-style:none;padding:0}ul.files li{margin:.5em 0}ul.files img{display:block;max-width:240px}
.failed .msg{color:#b00}.done .msg{color:#060}
"""


def _page(title: str, body: str) -> str:
    # the placeholder script last: every image it dresses is parsed by then
    script = f"<script>{PLACEHOLDER_SCRIPT}</script>" if "data-thumbhash=" in body else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        "<body><header><a href=\"/\">Photos</a><a href=\"/upload\">Upload</a></header>\n"
        f"<main>{body}</main>{script}</body></html>\n"
    )


_COLOR = re.compile(r"#[0-9a-f]{6}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _placeholder(record: PhotoRecord, style: str = "") -> str:
    """Attributes that dress an <img> as its photo's placeholder until the image loads: the
    dominant colour as its background at once (no script needed), the ThumbHash for
    PLACEHOLDER_SCRIPT to paint over it. Nothing for records made before placeholders."""
    parts = [style] if style else []
    if record.color and _COLOR.fullmatch(record.color):
        parts.append(f"background-color:{record.color}")
    attrs = f' style="{escape(";".join(parts))}"' if parts else ""
    if record.thumbhash and _BASE64.fullmatch(record.thumbhash):
        attrs += f' data-thumbhash="{escape(record.thumbhash)}"'
    return attrs


def _srcset(sizes: Sizes, record: PhotoRecord, names: tuple[str, ...]) -> tuple[str, SizeProfile | None, tuple[int, int]]:
    """srcset over the profiles that exist, the largest of them, and its (w, h)."""
    parts, last, dims = [], None, (record.width, record.height)
    for name in names:
        profile = sizes.get(name)
        if profile is None:
            continue
        box = box_for(profile, record.width, record.height)
        if last is not None and box.out_w <= dims[0]:
            continue  # the source is small: a larger size would be the same pixels
        parts.append(f"{rendition_url('', record.ref, profile)} {box.out_w}w")
        last, dims = profile, (box.out_w, box.out_h)
    return ", ".join(parts), last, dims


def _thumbs(sizes: Sizes, records: list[PhotoRecord], paged: bool, owners: bool = False) -> str:
    """A grid of thumbnails linking to each photo page (and, with ``owners``, to each owner's gallery)."""
    items = []
    for rec in records:
        srcset, largest, _ = _srcset(sizes, rec, GALLERY_SIZES)
        small = sizes.get("small") or largest
        if small is None:
            continue
        box = box_for(small, rec.width, rec.height)
        title = rec.title or f"Photo {rec.id}"
        by = f' <span class="meta">by <a href="/u/{escape(rec.owner)}">{escape(rec.owner)}</a></span>' if owners else ""
        items.append(
            f'<li><a href="/p/{escape(rec.owner)}/{escape(rec.id)}">'
            f'<img class="thumb" src="{escape(rendition_url("", rec.ref, small))}" srcset="{escape(srcset)}" '
            f'sizes="240px" width="{box.out_w}" height="{box.out_h}" alt="{escape(title)}" loading="lazy" '
            f'data-photo="{escape(rec.id)}"{_placeholder(rec)}></a><div>{escape(title)}{by}</div></li>'
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


def gallery_html(sizes: Sizes, user: str, records: list[PhotoRecord], older: str | None = None,
                 paged: bool = False) -> str:
    """Thumbnails of a user's public photos, newest first; ``older``: the id the next page starts below."""
    listing = _thumbs(sizes, records, paged)
    return _page(f"{user}'s photos", f"<h1>{escape(user)}</h1>{listing}{_pager(f'/u/{user}', older, paged)}")


def home_html(sizes: Sizes, records: list[PhotoRecord], older: str | None = None, paged: bool = False) -> str:
    """The site's front page: what it is, and the newest public photos of every user."""
    intro = ('<p class="meta">A photo site: upload your photos, and everyone sees them in the sizes that fit, '
             'from the cache node nearest the URL. <a href="/upload">Upload photos</a>.</p>')
    listing = _thumbs(sizes, records, paged, owners=True)
    return _page("Newest photos", f"<h1>Newest photos</h1>{intro}{listing}{_pager('/', older, paged)}")


def photo_html(sizes: Sizes, record: PhotoRecord, original_allowed: bool) -> str:
    """One photo, fitted to the window (never wider, nor taller than most of it), its facts (never
    its location), every size with its dimensions, and, for its owner, edit and delete."""
    srcset, largest, (w, h) = _srcset(sizes, record, PHOTO_SIZES)
    title = record.title or f"Photo {record.id}"
    img = ""
    if largest is not None:
        # the image is shown at most min(viewport width, its own width, 85vh x its aspect) wide;
        # `sizes` says the same, so the browser never fetches more pixels than it shows
        fit = f"min(100vw, {w}px, calc(85vh * {w} / {h}))"
        # its box has that width and the photo's aspect ratio before a byte of it arrives
        box = _placeholder(record, f"width:{fit};aspect-ratio:{w}/{h}")
        img = (f'<figure><img class="photo" src="{escape(rendition_url("", record.ref, largest))}" '
               f'srcset="{escape(srcset)}" sizes="{escape(fit)}" width="{w}" height="{h}" alt="{escape(title)}"'
               f'{box}></figure>')
    links = []
    for profile in sizes.values():
        box = box_for(profile, record.width, record.height)
        links.append(f'<li><a href="{escape(rendition_url("", record.ref, profile))}">{escape(profile.name)}</a> '
                     f'<span class="meta">{box.out_w}&times;{box.out_h}</span></li>')
    if original_allowed:
        links.append(f'<li><a href="{escape(original_url("", record.ref, record.format))}">original</a> '
                     f'<span class="meta">{record.width}&times;{record.height}</span></li>')
    facts = [f'<dt>Owner</dt><dd><a href="/u/{escape(record.owner)}">{escape(record.owner)}</a></dd>']
    for label, value in (("Taken", record.taken_at.replace("T", " ") if record.taken_at else None),
                         ("Camera", record.camera), ("Exposure", record.exposure)):
        if value:
            facts.append(f"<dt>{label}</dt><dd>{escape(value)}</dd>")
    owner = (f'<section id="owner-actions" hidden data-owner="{escape(record.owner)}" '
             f'data-api="/api/photos/{escape(record.owner)}/{escape(record.id)}">'
             '<h2>Your photo</h2><p><label>Title <input id="edit-title" maxlength="200" value="'
             f'{escape(record.title)}"></label> <button id="save-title">Save</button> '
             '<button id="make-private">Make private</button> <button id="delete-photo">Delete</button></p>'
             '<p id="owner-status" class="meta" aria-live="polite"></p></section>')
    body = (f'<h1>{escape(title)}</h1>{img}<dl class="facts">{"".join(facts)}</dl>'
            f'<h2>Sizes</h2><ul class="sizes">{"".join(links)}</ul>{owner}<script>{OWNER_SCRIPT}</script>')
    return _page(title, body)


#: the photo page's owner actions: shown only when the token this browser remembers (the upload
#: page keeps it in localStorage, never in a cookie: no request carries it unasked) is the owner's
OWNER_SCRIPT = r"""
(function () {
  var box = document.getElementById('owner-actions'), token = localStorage.getItem('yupoo-token') || '';
  if (!box || token.split('.')[0] !== box.dataset.owner) return;
  box.hidden = false;
  var status = document.getElementById('owner-status'), api = box.dataset.api;
  function call(method, body, done) {
    status.textContent = 'Saving…';
    var init = {method: method, headers: {'Authorization': 'Bearer ' + token}};
    if (body) { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
    fetch(api, init).then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (sr) {
        if (sr[0] !== 200) { status.textContent = (sr[1].message || ('error ' + sr[0])); return; }
        done(sr[1]);
      }).catch(function (e) { status.textContent = String(e); });
  }
  document.getElementById('save-title').onclick = function () {
    call('PATCH', {title: document.getElementById('edit-title').value}, function (j) {
      document.querySelector('h1').textContent = j.title || ('Photo ' + j.id); status.textContent = 'Saved.';
    });
  };
  document.getElementById('make-private').onclick = function () {
    call('PATCH', {private: true}, function () { status.textContent = 'Private now: only signed links show it.'; });
  };
  document.getElementById('delete-photo').onclick = function () {
    if (!confirm('Delete this photo for good?')) return;
    call('DELETE', null, function () { location.href = '/u/' + encodeURIComponent(box.dataset.owner); });
  };
})();
"""


#: paints each <img data-thumbhash> with its ThumbHash, decoded to a small picture, until the image
#: has loaded; then takes the placeholder away (an image with transparency shows no ghost behind it).
#: The decoder is Evan Wallace's reference thumbHashToRGBA (MIT, https://evanw.github.io/thumbhash/),
#: written out compactly; a canvas turns its pixels into a data: URL (the CSP allows inline scripts
#: and data: images: cluster/web.py sets only frame-ancestors).
PLACEHOLDER_SCRIPT = r"""
(function () {
  function thumbHashToRGBA(hash) {
    var PI = Math.PI, min = Math.min, max = Math.max, cos = Math.cos, round = Math.round;
    var h24 = hash[0] | (hash[1] << 8) | (hash[2] << 16), h16 = hash[3] | (hash[4] << 8);
    var lDc = (h24 & 63) / 63, pDc = ((h24 >> 6) & 63) / 31.5 - 1, qDc = ((h24 >> 12) & 63) / 31.5 - 1;
    var lScale = ((h24 >> 18) & 31) / 31, hasAlpha = h24 >> 23;
    var pScale = ((h16 >> 3) & 63) / 63, qScale = ((h16 >> 9) & 63) / 63, landscape = h16 >> 15;
    var lx = max(3, landscape ? (hasAlpha ? 5 : 7) : h16 & 7), ly = max(3, landscape ? h16 & 7 : (hasAlpha ? 5 : 7));
    var aDc = hasAlpha ? (hash[5] & 15) / 15 : 1, aScale = (hash[5] >> 4) / 15;
    var start = hasAlpha ? 6 : 5, index = 0;
    function channel(nx, ny, scale) {
      var ac = [];
      for (var cy = 0; cy < ny; cy++)
        for (var cx = cy ? 0 : 1; cx * ny < nx * (ny - cy); cx++, index++)
          ac.push((((hash[start + (index >> 1)] >> ((index & 1) << 2)) & 15) / 7.5 - 1) * scale);
      return ac;
    }
    var lAc = channel(lx, ly, lScale), pAc = channel(3, 3, pScale * 1.25), qAc = channel(3, 3, qScale * 1.25);
    var aAc = hasAlpha ? channel(5, 5, aScale) : null;
    var ratio = (landscape ? (hasAlpha ? 5 : 7) : hash[3] & 7) / (landscape ? hash[3] & 7 : (hasAlpha ? 5 : 7));
    var w = round(ratio > 1 ? 32 : 32 * ratio), h = round(ratio > 1 ? 32 / ratio : 32);
    var rgba = new Uint8Array(w * h * 4), fx = [], fy = [];
    for (var y = 0, i = 0; y < h; y++) {
      for (var x = 0; x < w; x++, i += 4) {
        var l = lDc, p = pDc, q = qDc, a = aDc, j, cx, cy, fy2, f;
        for (cx = 0; cx < max(lx, hasAlpha ? 5 : 3); cx++) fx[cx] = cos(PI / w * (x + 0.5) * cx);
        for (cy = 0; cy < max(ly, hasAlpha ? 5 : 3); cy++) fy[cy] = cos(PI / h * (y + 0.5) * cy);
        for (cy = 0, j = 0; cy < ly; cy++)
          for (cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx * ly < lx * (ly - cy); cx++, j++) l += lAc[j] * fx[cx] * fy2;
        for (cy = 0, j = 0; cy < 3; cy++)
          for (cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx < 3 - cy; cx++, j++) {
            f = fx[cx] * fy2; p += pAc[j] * f; q += qAc[j] * f;
          }
        if (hasAlpha)
          for (cy = 0, j = 0; cy < 5; cy++)
            for (cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx < 5 - cy; cx++, j++) a += aAc[j] * fx[cx] * fy2;
        var b = l - 2 / 3 * p, r = (3 * l - b + q) / 2, g = r - q;
        rgba[i] = max(0, 255 * min(1, r)); rgba[i + 1] = max(0, 255 * min(1, g));
        rgba[i + 2] = max(0, 255 * min(1, b)); rgba[i + 3] = max(0, 255 * min(1, a));
      }
    }
    return {w: w, h: h, rgba: rgba};
  }
  function thumbHashToDataURL(hash) {
    var img = thumbHashToRGBA(hash), canvas = document.createElement('canvas');
    canvas.width = img.w; canvas.height = img.h;
    var ctx = canvas.getContext('2d'), data = ctx.createImageData(img.w, img.h);
    data.data.set(img.rgba); ctx.putImageData(data, 0, 0);
    return canvas.toDataURL();
  }
  window.thumbHashToRGBA = thumbHashToRGBA;  // for tests/test_ypws_browser.py, which holds it to the reference
  document.querySelectorAll('img[data-thumbhash]').forEach(function (img) {
    if (img.complete && img.naturalWidth) return;
    img.addEventListener('load', function () { img.style.background = 'none'; }, {once: true});
    try {
      var bin = atob(img.dataset.thumbhash), bytes = new Uint8Array(bin.length);
      for (var k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
      img.style.backgroundImage = 'url(' + thumbHashToDataURL(bytes) + ')';
      img.style.backgroundSize = '100% 100%';
    } catch (e) { /* a damaged hash: the colour alone stays */ }
  });
})();
"""


def upload_html(upload_url: str, max_bytes: int) -> str:
    """Several photos at once (picker or drag-and-drop), each with its own progress bar and its own
    outcome; the token is asked once and remembered in this browser (localStorage, no cookie)."""
    script = (UPLOAD_SCRIPT.replace("__UPLOAD_URL__", json.dumps(upload_url or "/upload"))
              .replace("__MAX_BYTES__", str(int(max_bytes))))
    body = f"""<h1>Upload photos</h1>
<form id="upload" enctype="multipart/form-data">
<p id="who" hidden>Uploading as <b id="who-name"></b> &middot; <a href="#" id="forget">use another token</a></p>
<p id="token-row"><label>Upload token <input type="password" name="token" id="token" autocomplete="off"></label>
<span class="meta">asked once, then remembered in this browser</span></p>
<div id="drop" class="drop"><p>Drop photos here, or
<label><input type="file" name="photo" id="photo" accept="image/*" multiple></label></p>
<p class="meta">JPEG, PNG, GIF, WebP, TIFF, HEIC, AVIF, BMP; up to {max_bytes // (1024 * 1024)} MB each</p></div>
<p><label>Title <input type="text" name="title" id="title" maxlength="200"></label>
<span class="meta">(for every photo of this upload)</span></p>
<p><label><input type="checkbox" name="private" id="private" value="1"> Private</label></p>
<p><button type="submit" id="submit">Upload</button></p>
</form>
<ul id="files" class="files" aria-live="polite"></ul>
<p id="done" hidden><a id="gallery-link" href="/">See your photos</a></p>
<script>{script}</script>"""
    return _page("Upload photos", body)


UPLOAD_SCRIPT = r"""
(function () {
  var KEY = 'yupoo-token', MAX = __MAX_BYTES__;
  var form = document.getElementById('upload'), list = document.getElementById('files');
  var picker = document.getElementById('photo'), drop = document.getElementById('drop');
  var tokenInput = document.getElementById('token'), queued = [];

  function showToken() {
    var t = localStorage.getItem(KEY);
    document.getElementById('who').hidden = !t;
    document.getElementById('token-row').hidden = !!t;
    if (t) document.getElementById('who-name').textContent = t.split('.')[0];
  }
  document.getElementById('forget').onclick = function (ev) {
    ev.preventDefault(); localStorage.removeItem(KEY); showToken(); tokenInput.focus();
  };
  showToken();

  function add(files) { for (var i = 0; i < files.length; i++) queued.push(files[i]); }
  picker.addEventListener('change', function () { queued = []; add(picker.files); });
  drop.addEventListener('dragover', function (ev) { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', function () { drop.classList.remove('over'); });
  drop.addEventListener('drop', function (ev) {
    ev.preventDefault(); drop.classList.remove('over'); add(ev.dataTransfer.files);
  });

  function say(row, cls, text, link, href) {
    row.className = 'file ' + cls;
    var msg = row.querySelector('.msg'); msg.textContent = text;
    if (link) { var a = document.createElement('a'); a.href = href; a.textContent = link; msg.append(' ', a); }
  }
  var WHY = {413: 'too large: at most ' + Math.round(MAX / 1048576) + ' MB',
             415: 'not an image this site accepts', 401: 'the token was refused; enter it again',
             429: 'the site is busy: try again in a moment', 503: 'the site is busy: try again in a moment'};

  function one(file, token, title, priv) {
    return new Promise(function (resolve) {
      var row = document.createElement('li'), name = document.createElement('span');
      var bar = document.createElement('progress'), msg = document.createElement('span');
      name.className = 'name'; name.textContent = file.name; bar.max = file.size || 1; bar.value = 0;
      msg.className = 'msg'; row.className = 'file sending'; row.append(name, ' ', bar, ' ', msg);
      list.appendChild(row);
      if (file.size > MAX) { say(row, 'failed', WHY[413]); return resolve(false); }
      var data = new FormData();
      data.append('photo', file); data.append('title', title);
      if (priv) data.append('private', '1');
      var xhr = new XMLHttpRequest();
      xhr.open('POST', __UPLOAD_URL__);
      xhr.setRequestHeader('Authorization', 'Bearer ' + token);
      xhr.upload.onprogress = function (ev) { if (ev.lengthComputable) { bar.max = ev.total; bar.value = ev.loaded; } };
      xhr.onerror = function () { say(row, 'failed', 'the connection failed: try again'); resolve(false); };
      xhr.onload = function () {
        var j = {}; try { j = JSON.parse(xhr.responseText); } catch (e) {}
        bar.value = bar.max;
        if (xhr.status === 201 || xhr.status === 200) {
          row.dataset.photo = j.id;
          var page = '/p/' + encodeURIComponent(j.owner) + '/' + encodeURIComponent(j.id);
          if (xhr.status === 200) say(row, 'done duplicate', 'you already uploaded this:', 'see it', page);
          else say(row, 'done', 'uploaded:', 'see it', page);
          var thumb = j.urls && (j.urls.small || j.urls.thumb);
          if (thumb) {
            var u = new URL(thumb, location.href), img = document.createElement('img');
            img.src = u.pathname + u.search; img.alt = file.name; img.className = 'thumb'; row.appendChild(img);
          }
          return resolve(j.owner || true);
        }
        if (xhr.status === 401) localStorage.removeItem(KEY);
        say(row, 'failed', WHY[xhr.status] || (j.message || ('error ' + xhr.status)));
        resolve(false);
      };
      xhr.send(data);
    });
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var token = localStorage.getItem(KEY) || tokenInput.value.trim();
    if (!token) { tokenInput.focus(); return; }
    if (!queued.length) { picker.focus(); return; }
    var files = queued, title = document.getElementById('title').value;
    var priv = document.getElementById('private').checked;
    queued = []; picker.value = '';
    // two at a time: one slow or refused file never holds up or loses the others
    var next = 0, owner = null;
    function worker() {
      if (next >= files.length) return Promise.resolve();
      var f = files[next++];
      return one(f, token, title, priv).then(function (ok) {
        if (ok && !localStorage.getItem(KEY)) { localStorage.setItem(KEY, token); showToken(); }
        if (ok) owner = ok;
        return worker();
      });
    }
    Promise.all([worker(), worker()]).then(function () {
      if (owner && owner !== true) {
        var link = document.getElementById('gallery-link');
        link.href = '/u/' + encodeURIComponent(owner); document.getElementById('done').hidden = false;
      }
    });
  });
})();
"""
