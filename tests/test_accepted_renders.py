"""Accepted <=> renderable: an upload ypfs accepts can be shown in every size, and one it refuses
could not have been. For every file of both shared corpora (``../shared/corpus``,
``../shared/corpus2``): ypfs's decision (sniff + probe, what POST /upload runs) and whether
magickd's pipeline renders every configured size must agree. An accepted photo that then
fails every rendition is the worst outcome for an uploader (an Ultra HDR JPEG with a gain
map and an AVIF image sequence were such photos); a refused one that would render means a
user was turned away for nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import from_dict, load_dict
from cluster.profiles import by_name
from magickd import pipeline
from magickd.errors import RenderFailure
from magickd.options import Limits, RenderOptions, parse_targets
from media.probe import ImageRejected, probe
from media.sniff import HEAD_BYTES, sniff

from .helpers import CORPUS, CORPUS2

CORPORA = [CORPUS, CORPUS2]
CFG = from_dict(load_dict())
OPTIONS = RenderOptions(parse_targets(by_name(CFG.sizes), None, None), Limits.from_config(CFG.limits, CFG.magickd))


def corpus_files() -> list[Path]:
    out = []
    for corpus in CORPORA:
        for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:]:
            out.append(corpus / line.split("\t", 1)[0])
    return out


def accepted(data: bytes) -> bool:
    fmt = sniff(data[:HEAD_BYTES])
    if fmt is None:
        return False
    try:
        probe(data, fmt, CFG.limits)
    except ImageRejected:
        return False
    return True


def renders(data: bytes) -> bool:
    try:
        outputs = pipeline.render(data, OPTIONS)
    except RenderFailure:
        return False
    return {o.target.name for o in outputs} == {p.name for p in CFG.sizes}


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_ypfs_accepts_exactly_what_magickd_can_render(path):
    data = path.read_bytes()
    assert accepted(data) == renders(data), ("accepted" if accepted(data) else "refused") + " but " + (
        "renders" if renders(data) else "does not render")


@pytest.mark.parametrize("name", ["gain-map.jpg", "star.avifs"])
def test_the_two_that_were_accepted_and_never_shown_now_render(name):
    data = (CORPUS2 / "formats" / name).read_bytes()
    assert accepted(data) and renders(data)
