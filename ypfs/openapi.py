"""The OpenAPI 3 document of the upload and photo API, served at ``GET /api/openapi.json``.

Written out by hand, next to the resources it describes (ypfs/app.py), and kept true
by tests/test_openapi.py, which runs schemathesis against a running cluster from this
very document: every answer must match it and none may be a 5xx. Limits come from the
config, so the document states the limits this cluster enforces.
"""

from __future__ import annotations

from cluster.config import LimitsSection
from storage.keys import PHOTO_ID_RE, USER_RE

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    why = {400: "The request is malformed (the body says what was wrong)", 401: "No or a wrong token",
           403: "Not the photo's owner", 404: "No such photo or user (a private photo looks missing to others)",
           405: "Method not allowed", 409: "The photo changed meanwhile (another edit, or a delete): read it again",
           413: "Body too large", 415: "Unsupported media type",
           422: "The image cannot be decoded or breaks a limit",
           429: "Too many requests", 503: "Storage or a node is unavailable: retry after Retry-After"}
    return {str(c): {"description": why[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(public_url: str, limits: LimitsSection) -> dict:
    """The document for the cluster at ``public_url`` (its one server), stating ``limits``."""
    user = {"name": "user", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": USER_RE.pattern, "maxLength": 32}}
    photo_id = {"name": "photo_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": PHOTO_ID_RE.pattern}}
    photo = {"$ref": "#/components/schemas/Photo"}
    nullable_str = {"type": ["string", "null"]}
    cache_report = {
        "type": "object", "required": ["logged"],
        "properties": {
            "logged": {"type": "boolean", "description": "committed to the purge log: every cache node applies it"},
            "status": {"type": "string", "enum": ["applied", "logged", "no cache purge configured"]},
            "applied": {"type": "string", "description": "'N of M nodes' the direct push reached"},
            "log_entry": {"type": "string"},
            "nodes": {"type": "object", "additionalProperties": {"type": "string"}},
            "cdn": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "yupoo-cluster upload and photo API", "version": "1",
                 "description": "Uploads and the owner's actions on photos. Images themselves are served by "
                                "the cache nodes at /photos/{user}/{id}_{secret}/{size}.{ext}."},
        "servers": [{"url": public_url}],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "A user's upload token ({user}.{random}), "
                                                         "from `python -m ypfs user add NAME`"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"],
                          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
                "Photo": {
                    "type": "object",
                    "required": ["id", "owner", "secret", "title", "width", "height", "format", "bytes", "sha256",
                                 "pages", "private", "original_public", "uploaded_at", "urls", "thumbhash", "color"],
                    "properties": {
                        "id": {"type": "string", "pattern": PHOTO_ID_RE.pattern},
                        "owner": {"type": "string", "pattern": USER_RE.pattern},
                        "secret": {"type": "string", "pattern": "^[0-9a-f]{10}$"},
                        "title": {"type": "string", "maxLength": limits.max_title_chars},
                        "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
                        "format": {"type": "string"}, "bytes": {"type": "integer", "minimum": 1},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "pages": {"type": "integer", "minimum": 1},
                        "taken_at": nullable_str, "camera": nullable_str, "exposure": nullable_str,
                        "private": {"type": "boolean"}, "original_public": {"type": "boolean"},
                        "uploaded_at": {"type": "string"},
                        "thumbhash": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9+/]+={0,2}$",
                                      "description": "ThumbHash (https://evanw.github.io/thumbhash/) of the photo, "
                                                     "base64: a blurred preview to show until the image loads; "
                                                     "null for photos stored before placeholders existed"},
                        "color": {"type": ["string", "null"], "pattern": "^#[0-9a-f]{6}$",
                                  "description": "the photo's dominant colour, a box's background until the "
                                                 "image loads; null like thumbhash"},
                        "urls": {"type": "object", "additionalProperties": {"type": "string"},
                                 "description": "one URL per size name, plus 'original' when the owner allows it"},
                        "cache": cache_report,
                    },
                },
            },
        },
        "paths": {
            "/upload": {"post": {
                "summary": "Upload a photo",
                "security": [{"token": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["photo"],
                    "properties": {"photo": {"type": "string", "format": "binary",
                                             "description": f"the image, at most {limits.max_upload_bytes} bytes"},
                                   "title": {"type": "string", "maxLength": limits.max_title_chars},
                                   "private": {"type": "string", "enum": ["1", "0", "true", "false"]}}}}}},
                "responses": {"201": _json(photo, "Stored (durably: the answer comes after the write)"),
                              "200": _json(photo, "The same user uploaded the same bytes before: that photo"),
                              "409": _json({"type": "object", "required": ["error", "message", "photo"],
                                            "properties": {"error": {"type": "string", "enum": ["already_public"]},
                                                           "message": {"type": "string"}, "photo": photo}},
                                           "private=1 was asked, but these bytes are already this user's public "
                                           "photo (unchanged; Location and the message say how to make it private)"),
                              **_errors(400, 401, 413, 415, 422, 503)},
            }},
            "/api/photos/{user}/{photo_id}": {
                "parameters": [user, photo_id],
                "get": {"summary": "A photo (a private one only to its owner)", "security": [{"token": []}, {}],
                        "responses": {"200": _json(photo, "The photo"), **_errors(400, 401, 404, 503)}},
                "patch": {
                    "summary": "The owner edits title and visibility (made private, the photo gets a new secret)",
                    "security": [{"token": []}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "minProperties": 1, "additionalProperties": False,
                        "properties": {"title": {"type": "string", "maxLength": limits.max_title_chars},
                                       "private": {"type": "boolean"}, "original_public": {"type": "boolean"}}}}}},
                    "responses": {"200": _json(photo, "The photo as changed (with 'cache' when caches were purged)"),
                                  **_errors(400, 401, 403, 404, 409, 413, 415, 503)},
                },
                "delete": {
                    "summary": "The owner deletes the photo: record, original, every rendition, cached copies",
                    "security": [{"token": []}],
                    "responses": {"200": _json({"type": "object", "required": ["deleted", "owner", "objects_removed"],
                                                "properties": {"deleted": {"type": "string"},
                                                               "owner": {"type": "string"},
                                                               "objects_removed": {"type": "integer"},
                                                               "cache": cache_report}}, "Deleted"),
                                  **_errors(401, 403, 404, 503)},
                },
            },
            "/api/users/{user}/photos": {"get": {
                "summary": "A user's photos, oldest first (their private ones too, to the owner)",
                "security": [{"token": []}, {}],
                "parameters": [user,
                               {"name": "after", "in": "query", "required": False,
                                "schema": {"type": "string", "pattern": PHOTO_ID_RE.pattern}},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {"200": _json({"type": "object", "required": ["user", "photos"],
                                            "properties": {"user": {"type": "string"},
                                                           "photos": {"type": "array", "items": photo}}},
                                           "A page of photos"),
                              **_errors(400, 401, 503)},
            }},
        },
    }
