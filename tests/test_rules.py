"""Rules and requests (pure): globs, ordered rules, locations for every scheme, file/add fields."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

import cdn_push
from cdn_push import OriginConfig, Rule, Secret
from test_config import parse, with_


# -- location building ----------------------------------------------------------

@pytest.mark.parametrize("base_url, user, password, expected", [
    ("http://origin.example.com/v", "", "", "http://origin.example.com/v/a%20b/c%23d.mp4"),
    ("https://origin.example.com:8443/v/", "u", "p@ss:w/rd",
     "https://u:p%40ss%3Aw%2Frd@origin.example.com:8443/v/a%20b/c%23d.mp4"),
    ("ftp://ftp.example.com", "anon", "", "ftp://anon@ftp.example.com/a%20b/c%23d.mp4"),
    ("rsync://mirror.example.com/module", "", "", "rsync://mirror.example.com/module/a%20b/c%23d.mp4"),
    ("rsync+ssh://host.example.com:2222/home/v", "me", "pw",
     "rsync+ssh://me:pw@host.example.com:2222/home/v/a%20b/c%23d.mp4"),
    ("s3://s3.example.com/bucket/prefix", "AKIA", "sec/ret+",
     "s3://AKIA:sec%2Fret%2B@s3.example.com/bucket/prefix/a%20b/c%23d.mp4"),
])
def test_build_location_for_every_scheme(base_url, user, password, expected):
    origin = OriginConfig(base_url=base_url, username=user, password=Secret(password))
    assert cdn_push.build_location(origin, "a b/c#d.mp4") == expected


@pytest.mark.parametrize("relpath", ["x y/z.mp4", "100%.mp4", "a+b.mp4", "q?.mp4", "h#.mp4",
                                     "ünï/ファイル.mp4", "semi;colon&amp=1.mp4", "~tilde.mp4"])
def test_location_path_round_trips(relpath):
    location = cdn_push.build_location(OriginConfig(base_url="http://h/base"), relpath)
    parts = urlsplit(location)
    assert parts.query == "" and parts.fragment == ""
    assert unquote(parts.path) == "/base/" + relpath


def test_mask_url_hides_only_the_password():
    assert cdn_push.mask_url("https://u:p%40ss@h/x") == "https://u:***@h/x"
    assert cdn_push.mask_url("https://u@h/x") == "https://u@h/x"
    assert cdn_push.mask_url("https://h/x") == "https://h/x"


def test_redactor_masks_raw_and_percent_encoded_secrets():
    redact = cdn_push.Redactor(["p@ss/word!", "", "ab"])
    assert redact("x p@ss/word! y p%40ss%2Fword%21 z") == "x *** y *** z"
    assert redact("ab stays: too short to be a secret") == "ab stays: too short to be a secret"


# -- globs and rules ---------------------------------------------------------------

@pytest.mark.parametrize("pattern, path, expected", [
    ("*.mp4", "a.mp4", True),
    ("*.mp4", "deep/down/a.mp4", True),          # no slash: matches the name at any depth
    ("*.mp4", "a.mp4.part", False),
    ("series/*.mp4", "series/a.mp4", True),
    ("series/*.mp4", "series/s1/a.mp4", False),   # * stays within one folder
    ("series/**/*.mp4", "series/a.mp4", True),    # **/ matches zero folders too
    ("series/**/*.mp4", "series/s1/e/a.mp4", True),
    ("series/**", "series/s1/a.mp4", True),
    ("series/**", "other/a.mp4", False),
    ("/top.mp4", "top.mp4", True),
    ("/top.mp4", "sub/top.mp4", False),
    ("ep?.mp4", "ep1.mp4", True),
    ("ep?.mp4", "ep10.mp4", False),
    ("ep[0-9].mp4", "ep7.mp4", True),
    ("ep[!0-9].mp4", "ep7.mp4", False),
    ("a+b (1).mp4", "a+b (1).mp4", True),         # regex characters are literal
    ("[unclosed", "[unclosed", True),
])
def test_glob_matches(pattern, path, expected):
    assert cdn_push.glob_matches(pattern, path) is expected


def test_every_matching_rule_applies_in_order_later_wins():
    defaults = {"speed": "300K", "buffer": "5.0"}
    rules = (Rule("**/*.mp4", {"speed": "130%", "protection": "signature"}),
             Rule("trailers/**", {"fetch_prio": "1", "speed": "1M"}),
             Rule("trailers/raw/**", {"buffer": None}))
    assert cdn_push.overrides_for("film.mp4", defaults, rules) == {
        "speed": "130%", "buffer": "5.0", "protection": "signature"}
    assert cdn_push.overrides_for("trailers/t.mp4", defaults, rules) == {
        "speed": "1M", "buffer": "5.0", "protection": "signature", "fetch_prio": "1"}
    assert cdn_push.overrides_for("trailers/raw/t.mov", defaults, rules) == {
        "speed": "1M", "fetch_prio": "1"}


@pytest.mark.parametrize("overrides, priority", [
    ({}, 0), ({"fetch_prio": "1"}, 1), ({"fetch_prio": "5"}, 5), ({"fetch_prio": "high"}, 1),
    ({"fetch_prio": "0"}, 1),
])
def test_priority_of(overrides, priority):
    assert cdn_push.priority_of(overrides) == priority


def test_build_request_fields():
    config = parse(with_(None, name_prefix="site/", defaults={"no_replace": True, "speed": "300K"}),
                   env={})
    params = cdn_push.build_request(config, "a b.mp4", 12, "AB" * 32, {"no_replace": True, "speed": "300K"})
    assert params == {"location": "https://files.example.com/videos/a%20b.mp4", "name": "site/a b.mp4",
                      "size": "12", "chksum": "ab" * 32, "no_replace": "true", "speed": "300K"}
