"""The watchdog's stall rule (runtime/parallel.py), on the beats as the ranks write them. The two-process run in
which one rank stalls is tests/test_parallel.py's test_stalled_rank_stops_the_run_naming_it_within_the_bound."""

import pytest

from skyreels_cli.errors import UsageError
from skyreels_cli.runtime import parallel as P


def _beat(progress: P.Progress) -> tuple[int, bool, str]:
    return P.read_beat(progress.beat().encode())


def test_a_beat_carries_the_progress_and_moves_with_each_call_and_step():
    progress = P.Progress()
    assert _beat(progress)[1] is False  # not in a run: never stalled
    progress.start()
    first = _beat(progress)
    progress.transformer_call()
    assert _beat(progress)[0] > first[0] and _beat(progress)[2] == "starting the run, then in the transformer"
    progress.step("window 2: step 3 of 4 done")
    assert _beat(progress)[1:] == (True, "window 2: step 3 of 4 done")
    assert P.read_beat(P.Watchdog.LEFT) is None and P.read_beat(b"") is None
    assert P.read_beat(b"1.5|7|1|a | in the text") == (7, True, "a | in the text")


def test_the_rank_behind_is_named_once_nothing_moved_for_the_bound():
    beats = {0: (9, True, "window 1: step 2 of 3 done, then in the transformer"),
             1: (8, True, "window 1: step 2 of 3 done")}
    assert P.stalled_ranks(beats, 4.0, 5.0) is None  # not yet
    why = P.stalled_ranks(beats, 6.0, 5.0)
    assert why.startswith("rank 1 made no progress for 6 s (window 1: step 2 of 3 done) while rank 0 waited for it")
    assert "SKYREELS_STALL_S" in why
    # the same beats with rank 0 behind name rank 0: the rule reads the counts, not the rank number
    swapped = {0: beats[1], 1: beats[0]}
    assert P.stalled_ranks(swapped, 6.0, 5.0).startswith("rank 0 made no progress")
    # a rank not in a run (waiting for the next request, or rank 0 before it shares one) is never a stall
    assert P.stalled_ranks({**beats, 1: (8, False, "starting the run")}, 600.0, 5.0) is None
    # all level (stuck inside the same call): every one named
    level = P.stalled_ranks({0: (5, True, "a"), 1: (5, True, "b")}, 6.0, 5.0)
    assert level.startswith("ranks 0, 1 made no progress for 6 s (rank 0: a; rank 1: b) all in the same step")


def test_the_bound_from_the_environment():
    assert P.stall_bound(None) == P.STALL_AFTER_S >= 300  # generous by default: a slow real step never hits it
    assert P.stall_bound("2.5") == 2.5
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(UsageError, match=r"^SKYREELS_STALL_S='.*' is not a number of seconds above 0; set it"):
            P.stall_bound(bad)


def test_a_rank_whose_peer_stopped_the_run_repeats_its_reason(tmp_path):
    """The first watchdog to stop a run posts why in the rendezvous store; a rank whose collective then fails on the
    closed connection says the same line rather than its own guess (one cause, one line on every rank)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        parallel = P.Parallel(0, 1, 0, P.torch.device("cpu"))
        closed = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                              "[127.0.0.1]:41371. This is typically caused by a crash")
        with pytest.raises(P.PeerLost, match=r"^another process of this run stopped \(Connection closed by peer "
                                             r"\[127.0.0.1\]:41371\); nothing was written$"):
            with parallel.peers_lost_as_errors("nothing was written"):
                raise closed
        assert P.stop_reason() is None
        dist.distributed_c10d._get_default_store().set(P.STOPPED_KEY, "rank 1 made no progress for 4 s (x)")
        with pytest.raises(P.PeerLost, match=r"^rank 1 made no progress for 4 s \(x\); stopping this rank \(nothing "):
            with parallel.peers_lost_as_errors("nothing was written"):
                raise closed
    finally:
        dist.destroy_process_group()


def test_a_run_says_what_it_leaves_if_stopped_in_its_callers_spelling():
    from skyreels_cli.errors import command_line_spelling, kept_after_stop

    progress = P.Progress()
    assert progress.kept == "nothing was written"
    with command_line_spelling():
        progress.start(kept_after_stop(True))
    assert progress.kept == "the finished windows are kept: run the same command with --resume to continue"
