"""The peers section of tools/bench.py reports what it measured: the handshake target is
judged at the table's concurrency, and the handshake rates at the other concurrencies, and
with every upgrade head different, are printed beside it, each with both servers' CPU (no
server or load generator needed here)."""

import os
import sys

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
sys.path.insert(0, TOOLS)

import bench  # noqa: E402  (tools/ is on the path above)

MINISOUP, LIBSOUP = "minisoup (1 process)", "libsoup 3.2.3 in C"


def peers():
    return [bench.Peer(MINISOUP, "minisoup", ("hs",) + bench.HS_SWEEP_FIGURES),
            bench.Peer(LIBSOUP, "libsoup-c", ("hs",) + bench.HS_SWEEP_FIGURES)]


def handshake_table(sweep: bool) -> dict:
    table = {(MINISOUP, "hs"): bench.PeerFigure(16760, (0.99, 0.72, 0.0)),
             (LIBSOUP, "hs"): bench.PeerFigure(16198, (0.99, 0.72, 0.0))}
    if sweep:
        low, high = ("hs@%d" % conc for conc in bench.PEER_HS_SWEEP)
        table[(MINISOUP, low)] = bench.PeerFigure(6860, (0.64, 0.43, 0.0))
        table[(LIBSOUP, low)] = bench.PeerFigure(8103, (0.71, 0.47, 0.0))
        table[(MINISOUP, high)] = bench.PeerFigure(20250, (0.99, 0.80, 0.0))
        table[(LIBSOUP, high)] = bench.PeerFigure(15769, (0.99, 0.71, 0.0))
        table[(MINISOUP, "hs-distinct")] = bench.PeerFigure(16300, (0.99, 0.70, 0.0))
        table[(LIBSOUP, "hs-distinct")] = bench.PeerFigure(15900, (0.99, 0.71, 0.0))
    return table


def test_the_sweep_is_measured_for_minisoup_and_libsoup_at_other_concurrencies():
    assert bench.PEER_HS_SWEEP == (1, 64)
    assert bench.PEER_HS_CONC not in bench.PEER_HS_SWEEP
    assert bench.HS_SWEEP_FIGURES == ("hs@1", "hs@64", "hs-distinct")
    assert bench.HS_FIGURES["hs"] == (bench.PEER_HS_CONC, "same")
    assert bench.HS_FIGURES["hs-distinct"] == (bench.PEER_HS_CONC, "distinct")
    assert "(%d at a time)" % bench.PEER_HS_CONC in dict(bench.PEER_COLUMNS)["hs"]


def test_the_target_is_judged_at_the_table_concurrency_and_the_sweep_printed_beside_it(capsys):
    bench.print_peer_targets(peers(), handshake_table(sweep=True))
    out = capsys.readouterr().out
    verdict = next(text for text in out.splitlines() if text.strip().startswith("handshakes/s "))
    assert "1.03x" in verdict and "MISSED" in verdict
    assert "the target is judged at 8" in out
    assert ("1: 6,860 [64/43] / 8,103 [71/47] = 0.85x; 8: 16,760 [99/72] / 16,198 [99/72] = 1.03x;"
            " 64: 20,250 [99/80] / 15,769 [99/71] = 1.28x") in out
    assert ("different (wsload HEADS=distinct, 8 at a time): 16,300 [99/70] / 15,900 [99/71] "
            "= 1.03x") in out


def test_without_the_sweep_figures_no_sweep_line(capsys):
    bench.print_peer_targets(peers(), handshake_table(sweep=False))
    out = capsys.readouterr().out
    assert "MISSED" in out
    assert "by cycles at a time" not in out and "HEADS=distinct" not in out
