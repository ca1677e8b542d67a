"""The ingress's Prometheus metrics (plain prometheus_client, no Ray)."""

from __future__ import annotations

import re

from serving.metrics import Metrics


def _value(text: str, name: str, stage: str) -> float:
    found = re.search(rf'^{name}\{{stage="{stage}"\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_answers_past_their_deadline_are_counted_by_stage():
    m = Metrics()
    answer = {"stage": "retrieval", "fallback": "rerank_timeout", "timings_ms": {"total": 1}}
    m.observe(answer, 0.150, "miss", deadline_s=0.2)  # on time
    m.observe(answer, 0.238, "miss", deadline_s=0.2)  # late
    m.observe({**answer, "stage": "rerank"}, 0.9, None, deadline_s=1.0)  # a variant's budget
    m.observe({**answer, "stage": "rerank"}, 0.9, None)  # no deadline given: not judged
    text = m.render()[0].decode()
    assert _value(text, "llmrec_past_deadline_total", "retrieval") == 1
    assert _value(text, "llmrec_past_deadline_total", "rerank") == 0
    assert _value(text, "llmrec_recommend_total", "retrieval") == 2


def test_answers_that_show_a_new_item_in_its_place_are_counted():
    m = Metrics()
    answer = {"stage": "features", "fallback": None, "timings_ms": {}}
    m.observe({**answer, "items": [{"stage": "features"}, {"stage": "new_item"}]}, 0.01, None)
    m.observe({**answer, "items": [{"stage": "features"}]}, 0.01, None)
    m.observe({**answer, "items": [{"stage": "new_item"}]}, 0.01, "hit")
    found = re.search(r"^llmrec_new_item_shown_total ([0-9.e+]+)$", m.render()[0].decode(), re.M)
    assert found and float(found.group(1)) == 2
