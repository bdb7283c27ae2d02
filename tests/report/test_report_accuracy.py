"""The report on classifier rows: M = top-1 accuracy, A(Q->P) = acc("Q > P") - acc("P > Q")."""

from __future__ import annotations

from pathlib import Path

from crescendo.report import build_report
from crescendo.report.analysis import cells, cer_by_ratio
from crescendo.report.data import group_rows
from crescendo.store import ResultStore, Row, RunMetrics

MODEL, PROTOCOL = "fmnist-resnet-mini-s0", "fmnist-v1"
DENSE = 92.0
Q_ACC = {8: 92.0, 4: 91.0, 3: 88.0, 2: 60.0}  # C_Q = 2, 4, 5.33, 8
P_ACC = {0.5: 89.5}  # between 4 bits (91) and 3 bits (88): C*_P = 4 + (1.5 / 3) * 1.33 = 4.67


def _row(recipe: str, kind: str, acc: float, extra: dict) -> Row:
    return Row.create(MODEL, PROTOCOL, recipe, 0, "0.1.0", kind, extra=extra,
                      metrics=RunMetrics.from_accuracy(acc, {"sparsity": 0.0, "avg_weight_bits": 16.0}))


def rows() -> list[Row]:
    tpl = {"prune": "sparsegpt:{r}", "quant": "rtn:w{b}"}
    out = [_row("dense", "dense", DENSE, {})]
    out += [_row(f"rtn:w{b}", "single", a, {"method": "quant", "bits": b, **tpl}) for b, a in Q_ACC.items()]
    out += [_row("sparsegpt:0.5", "single", P_ACC[0.5], {"method": "prune", "ratio": 0.5, **tpl})]
    for b, (p_first, q_first) in {8: (89.0, 89.4), 4: (88.0, 88.1), 3: (85.0, 84.0), 2: (50.0, 30.0)}.items():
        base = {"ratio": 0.5, "bits": b, **tpl}
        out.append(_row(f"sparsegpt:0.5 > rtn:w{b}", "order", p_first, base | {"first": "prune"}))
        out.append(_row(f"rtn:w{b} > sparsegpt:0.5", "order", q_first, base | {"first": "quant"}))
    return out


def test_accuracy_rows_give_cer_advantage_and_an_accuracy_report(tmp_path: Path):
    (exp,) = group_rows(rows()).experiments
    assert exp.metric_name == "accuracy" and exp.dense.metric == DENSE
    cer = cer_by_ratio(exp)[0.5]
    assert cer.is_exact and abs(cer.value - (4 + 0.5 * 4 / 3)) < 1e-9
    advantage = {c.bits: c.advantage for c in cells(exp)}
    assert abs(advantage[8] - 0.4) < 1e-9 and abs(advantage[2] + 20.0) < 1e-9  # acc(Q > P) - acc(P > Q)
    predicted = {c.bits: c.predicted_first for c in cells(exp)}
    assert predicted == {8: "quant", 4: "quant", 3: "prune", 2: "prune"}  # Q first iff C_Q < C*_P
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        for row in rows():
            store.put(row)
    index = build_report(path, tmp_path / "report")
    md = index.markdown.read_text()
    assert "M = top-1 accuracy (%)" in md and "Accuracy (%), prune first" in md and "linear in accuracy (%)" in md
    assert "dense accuracy (%) 92.00" in md and "perplexity (" not in md.split("## ", 2)[2]
    assert index.summaries[exp.key.label].agree == 4 and any(p.name.startswith("fig3") for p in index.figures)
