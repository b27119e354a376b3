"""Window planning (forcing/windows.py), tested directly: `plan_for_length`, the function every run uses, over
every small length and setting, against the invariants a run relies on; and `plan_windows` with cuts."""

import itertools

import pytest

from skyreels_cli.errors import UsageError
from skyreels_cli.forcing.frames import TEMPORAL, latent_frames, pixel_frames
from skyreels_cli.forcing.windows import TailError, plan_for_length, plan_windows

# Every combination of these is planned for every length up to MAX_FRAMES (a few thousand plans in well under a
# second): windows of 2 to 7 latent frames, overlaps that fit them, blocks of 1 to 3, and each kind of start.
BASES = (5, 9, 13, 17, 21, 25)
OVERLAPS = (1, 5, 9)
BLOCKS = (1, 2, 3)
STARTS = ("none", "image", "video")
MAX_FRAMES = 61


def settings():
    for base, overlap, block, start, end in itertools.product(BASES, OVERLAPS, BLOCKS, STARTS, (False, True)):
        if overlap < base:
            yield dict(base_frames=base, overlap_frames=overlap, causal_block=block, image=start == "image",
                       video=start == "video", end_image=end)


def lengths(video: bool):
    return range(TEMPORAL, MAX_FRAMES + 1, TEMPORAL) if video else range(1, MAX_FRAMES + 1)


def check_plan(frames: int, made: int, plan, s: dict) -> None:
    base, overlap, c = latent_frames(s["base_frames"]), latent_frames(s["overlap_frames"]), s["causal_block"]
    start = overlap if s["video"] else (1 if s["image"] else 0)
    assert made >= frames, "at least the frames asked for"
    assert plan.total == (start + made // TEMPORAL if s["video"] else latent_frames(made)), "the frames made"
    assert plan.start_prefix == start
    assert sum(w.new for w in plan.windows) == plan.total - start, "every latent frame made exactly once"
    for i, w in enumerate(plan.windows):
        assert w.index == i and 0 < w.new and w.length <= base, "no window past the model's window"
        assert w.new % c == 0, "new frames fill whole causal blocks: none is left undenoised"
        assert sum(w.blocks) == w.length and w.ready_blocks >= (1 if w.prefix else 0)
        assert w.prefix == (start if i == 0 else overlap), "each later window continues from the overlap"
        assert w.end_image == (s["end_image"] and i == len(plan.windows) - 1), "only the last holds the end image"


@pytest.mark.parametrize("s", list(settings()), ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_every_small_length_plans_or_is_refused_whole(s):
    """For each setting, each length either plans (the invariants hold, and the shortest length at or above
    it that works is chosen) or is refused with one line; once a length is refused, so is every longer one
    (a setting that cannot carry an overlap across windows still makes a single window)."""
    planned, refused = {}, None
    for frames in lengths(s["video"]):
        try:
            made, plan = plan_for_length(frames, **s)
        except UsageError as err:
            assert "\n" not in str(err)
            refused = refused or frames
            continue
        assert refused is None, f"{frames} planned although {refused} was refused"
        check_plan(frames, made, plan, s)
        planned[frames] = made
    made_lengths = sorted(set(planned.values()))
    for frames, made in planned.items():  # the shortest that works: no planned length lies in [frames, made)
        assert not any(frames <= other < made for other in made_lengths), (frames, made)


def test_lengths_are_whole_latent_frames_and_cut_exactly():
    assert plan_for_length(1, base_frames=97, overlap_frames=17)[0] == 1
    assert [plan_for_length(n, base_frames=97, overlap_frames=17)[0] for n in (2, 5, 6, 97, 98)] == [5, 5, 9, 97, 101]
    assert plan_for_length(10, base_frames=97, overlap_frames=17, video=True)[0] == 12  # new frames: multiples of 4


def test_a_long_plan_matches_the_reference_counts():
    made, plan = plan_for_length(1457, base_frames=97, overlap_frames=17)
    assert made == 1457 and len(plan.windows) == 18  # a 60-second video is 18 windows
    assert [w.prefix for w in plan.windows[:2]] == [0, 5]
    assert sum(w.new for w in plan.windows) == latent_frames(1457)


def test_a_start_image_is_its_own_block_in_asynchronous_mode():
    _, plan = plan_for_length(101, base_frames=97, overlap_frames=17, causal_block=5, image=True)
    first = plan.windows[0]
    assert first.blocks[:2] == (1, 5) and first.ready_blocks == 1 and first.prefix == 1


def test_a_tail_that_would_stay_noisy_is_made_longer_not_left_noisy():
    made, plan = plan_for_length(249, base_frames=97, overlap_frames=17, causal_block=5)
    assert made > 249 and all(w.new % 5 == 0 for w in plan.windows)


def test_an_overlap_that_is_no_whole_block_names_the_ones_that_are():
    with pytest.raises(UsageError, match="use overlap=17 or 37"):
        plan_windows(40, base=10, overlap=3, causal_block=5)


def test_an_overlap_that_leaves_no_room_says_so():
    with pytest.raises(UsageError, match="leaves no room for a causal block of 3"):
        plan_windows(40, base=7, overlap=6, causal_block=3)


def test_cuts_end_windows_where_they_fall():
    plan = plan_windows(39, base=9, overlap=3, causal_block=3, cuts=(9, 12))
    ends, done = [], 0
    for w in plan.windows:
        done += w.new
        ends.append(done)
    assert 9 in ends and 12 in ends and ends[-1] == 39, "no window's new frames cross a cut"
    assert all(w.new % 3 == 0 and w.length <= 9 for w in plan.windows)
    assert plan_windows(39, base=9, overlap=3, causal_block=3).windows != plan.windows
    with pytest.raises(TailError):  # a stretch between cuts that is no whole block
        plan_windows(40, base=9, overlap=3, causal_block=3, cuts=(10,))
    assert pixel_frames(latent_frames(97)) == 97


def test_a_long_plan_counts_its_windows_in_runs_each_built_when_asked_for():
    """A day of video at 24 fps in windows of 25 latent frames overlapping 5: 1 + ceil((L - B) / (B - O)) windows,
    held as a few runs of the same window (a window shape each); by index as by iteration; a shot's cut and the
    end image are windows of their own. The count moves with the length (the comparison can fail)."""
    import math

    total, base, overlap = latent_frames(2_073_600), 25, 5
    plan = plan_windows(total, base=base, overlap=overlap, end_image=True)
    assert len(plan.windows) == 1 + math.ceil((total - base) / (base - overlap)) == 25920
    assert len(plan.windows.runs) <= 3 and len(plan_windows(total + 20, base=base, overlap=overlap).windows) == 25921
    assert plan.windows[-1].end_image and not plan.windows[-2].end_image and plan.windows[-2].index == 25918
    cut = plan_windows(total, base=base, overlap=overlap, cuts=(1000,))
    assert len(cut.windows.runs) <= 6 and sum(w.new for w in cut.windows) == total
    ends = list(itertools.accumulate(w.new for w in cut.windows))
    assert 1000 in ends, "no window's new frames cross the cut"
    small = plan_windows(41, base=9, overlap=3, cuts=(17,), end_image=True)
    assert [small.windows[i] for i in range(len(small.windows))] == list(small.windows) == small.windows[:]
    assert [w.index for w in small.windows] == list(range(len(small.windows)))
