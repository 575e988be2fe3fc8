"""`hangar judge` against a live `hangar serve` (the 270M model is a weak judge: this
checks the plumbing — both orders per pair, counting of unparseable answers, the
on-disk cache — not its wisdom)."""

import json
import subprocess

from conftest import ROOT, hangar_bin

DATA = ROOT / "crates" / "eval" / "data"


def judge(server, path, cache, *extra, max_tokens=48):
    cmd = [hangar_bin(), "judge", "-i", str(path), "--endpoint", server.base, "--max-tokens", str(max_tokens),
           "--cache-dir", str(cache), "--json", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_pairwise_judges_both_orders_counts_and_caches(server, tmp_path):
    out = tmp_path / "items.jsonl"
    r = judge(server, DATA / "judge_pairwise.jsonl", tmp_path / "cache", "--out", str(out))
    m = r["metrics"]
    assert r["kind"] == "judge_pairwise" and m["items"] == 2
    # Every pair is one of: a win, a tie (incl. inconsistent orders), or unparseable.
    assert m["wins_a"] + m["wins_b"] + m["ties"] + m["unparseable"] == 2
    assert m["inconsistent"] <= m["ties"]
    assert 0 <= m["win_rate_a_ci_low"] <= m["win_rate_a"] <= m["win_rate_a_ci_high"] <= 1
    # Both orders were asked: two calls per pair.
    assert r["cache"] == {"hits": 0, "misses": 4}
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 2 and all("judgement_ab" in x and "judgement_ba" in x for x in rows)
    for x in rows:
        if x["winner"] is None:
            assert x["verdict_ab"] is None or x["verdict_ba"] is None
    # The same run again is answered from the cache, with the same result.
    again = judge(server, DATA / "judge_pairwise.jsonl", tmp_path / "cache")
    assert again["cache"] == {"hits": 4, "misses": 0}
    assert again["metrics"] == m
    # Other parameters are other cache keys.
    other = judge(server, DATA / "judge_pairwise.jsonl", tmp_path / "cache", max_tokens=40)
    assert other["cache"]["misses"] == 4


def test_absolute_counts_ratings_and_unparseable(server, tmp_path):
    r = judge(server, DATA / "judge_absolute.jsonl", tmp_path / "cache")
    m = r["metrics"]
    assert r["kind"] == "judge_absolute"
    assert m["rated"] + m["unparseable"] == 2
    if m["rated"]:
        assert 1 <= m["mean_rating"] <= 10
    assert r["cache"]["misses"] == 2


def test_judge_as_a_generation_metric(server, tmp_path):
    cmd = [hangar_bin(), "eval", "--task", str(DATA / "basic_gen.jsonl"), "--endpoint", server.base,
           "--judge-endpoint", server.base, "--cache-dir", str(tmp_path), "--json",
           "--out", str(tmp_path / "items.jsonl")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)["metrics"]
    assert m["items"] == 3 and 0 <= m["rougeL"] <= 1
    assert 0 <= m["judge_unparseable"] <= 3
    rows = [json.loads(l) for l in (tmp_path / "items.jsonl").read_text().splitlines()]
    rated = [r["judge_rating"] for r in rows if r["judge_rating"] is not None]
    assert len(rated) + m["judge_unparseable"] == 3
