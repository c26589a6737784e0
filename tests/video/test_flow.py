"""Tracking through frames without landmarks by optical flow (``video.flow``): the gap helpers, and
a synthetic head turning to full profile through the video pipeline, against the true rotation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flame_tracker.video.flow import FlowOptions, _anchored, _blend, _flow_gaps, _Gap, _mean_pose, gaps, needed_rows


def test_gaps_and_the_rows_flow_needs() -> None:
    valid = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0], bool)
    assert gaps(valid) == [(3, 5), (9, 10), (11, 13)]
    times = np.arange(len(valid)) / 10.0
    rows = needed_rows(valid, times, FlowOptions(anchor_back=2, anchors=1, min_gap_s=0.0))
    # gap 3-4: anchors 2 (and 2 frames before it: 0, 1) and 5 (and 6, 7); gap 9: 8,7,6 / 10;
    # gap 11-12 at the end: anchor 10 only (9 is not valid, so no frames before it)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    rows = needed_rows(valid, times, FlowOptions(anchor_back=0, anchors=1, max_gap_s=0.25, min_gap_s=0.0))
    assert rows.tolist() == [8, 9, 10, 11, 12]  # 3-4 spans 0.3 s (frames 2 to 5): too long at 0.25 s
    # by default a gap between landmark frames 0.2 s apart (9: frames 8 to 10) is left to the
    # smoother; one at the clip's end (11-12) is followed however short
    # (frame 10 alone between two gaps would make one gap of 9-12 with it as a probe: not here)
    assert [(g.g0, g.g1) for g in _flow_gaps(valid, times, FlowOptions(probe_s=0.0))] == [(3, 5), (11, 13)]
    assert [(g.g0, g.g1) for g in _flow_gaps(valid, times, FlowOptions(probe_s=0.0, min_gap_s=0.3))] == [(11, 13)]
    # three starts, 1 and 3 and 5 frames back: the frames up to 5 back are needed (as many as there are)
    long = np.array([1] * 8 + [0, 0] + [1] * 8, bool)
    rows = needed_rows(long, np.arange(len(long)) / 10.0, FlowOptions(anchor_back=1, anchors=3, anchor_step=2))
    assert rows.tolist() == list(range(2, 16))
    assert needed_rows(np.zeros(5, bool), np.arange(5.0)).size == 0  # nothing to anchor on


def test_short_runs_of_landmarks_inside_a_gap_are_followed_through() -> None:
    """A run of landmark frames no longer than ``probe_s`` between two gaps makes one gap with those
    frames as probes (checked against the flow); not across a cut, nor past ``max_gap_s``."""
    valid = np.array([1] * 6 + [0] * 4 + [1] + [0] * 3 + [1] * 6 + [0] * 2 + [1] * 3 + [0] * 2 + [1] * 6, bool)
    times = np.arange(len(valid)) / 10.0  # 10 fps: the default 0.1 s takes runs of one frame
    spans = [(g.g0, g.g1, g.probes) for g in _flow_gaps(valid, times, FlowOptions())]
    assert spans == [(6, 14, (10,)), (20, 22, ()), (25, 27, ())]  # frames 22-24 last 0.3 s: no probes
    assert [g.probes for g in _flow_gaps(valid, times, FlowOptions(probe_s=0.0))] == [(), (), (), ()]
    merged = _flow_gaps(valid, times, FlowOptions())[0]
    assert (merged.a, merged.b) == (5, 14)  # anchored outside the probe
    assert [(g.g0, g.g1, g.probes) for g in _flow_gaps(valid, times, FlowOptions(probe_s=0.3))][1] == \
        (20, 27, (22, 23, 24))
    cuts = np.zeros(len(valid), bool)
    cuts[10] = True  # the probe starts another shot: the gap before it is not followed (it ends on a cut)
    assert [(g.g0, g.g1) for g in _flow_gaps(valid, times, FlowOptions(), cuts)][0] == (11, 14)
    # merged, the gap would last 0.9 s: two gaps of 0.5 and 0.4 s instead
    assert [(g.g0, g.g1, g.probes) for g in _flow_gaps(valid, times, FlowOptions(max_gap_s=0.6))][:2] == \
        [(6, 10, ()), (11, 14, ())]
    # merged, the gap would end on a cut (not followed) or be the whole clip (nothing to start
    # from): the gaps stay as they were, and the one before the probe is still followed
    v = np.array([1] * 10 + [0] * 10 + [1] + [0] * 10 + [1] * 10, bool)
    cuts = np.zeros(len(v), bool)
    cuts[31] = True
    assert [(g.g0, g.g1) for g in _flow_gaps(v, np.arange(len(v)) / 30.0, FlowOptions(), cuts)] == [(10, 20)]
    v = np.array([0] * 10 + [1] + [0] * 10, bool)
    assert [(g.g0, g.g1, g.b, g.a) for g in _flow_gaps(v, np.arange(len(v)) / 30.0, FlowOptions())] == \
        [(0, 10, 10, None), (11, 21, None, 10)]


def test_opencv_threads_come_back_after_overlapping_blocks() -> None:
    """The flow turns OpenCV's threads off while its tracks run in threads; two such blocks at once
    in two threads (two videos in one process) leave the setting as it was once both end."""
    import cv2

    from flame_tracker.threads import opencv_single_thread

    before = cv2.getNumThreads()
    a, b = opencv_single_thread(), opencv_single_thread()
    a.__enter__()
    b.__enter__()
    assert cv2.getNumThreads() == 1
    a.__exit__(None, None, None)
    assert cv2.getNumThreads() == 1  # the other block still runs
    b.__exit__(None, None, None)
    assert cv2.getNumThreads() == before


def test_the_gap_meets_its_ends_when_the_tracks_hold_on_part_of_it() -> None:
    """Frames 10-19 without landmarks between fits at 9 and 20. One track alone reaching the far end
    (a face covered brows to chin: the backward track lost at once) is pulled onto the far end's fit,
    its drift there spread back over the gap (a trial: a 28° jump onto the landmarks after the gap);
    where both hold on part of the gap the weight moves from one to the other over those frames."""
    times = np.arange(30) / 25.0
    gap = _Gap(10, 20, 9, 3, 20, 26)
    fits = np.zeros((30, 6))
    fits[:, 5] = 1.0
    fits[20, 1] = 0.5  # the head turned 0.5 rad about y by the end of the gap
    w = (times[10:20] - times[9]) / (times[20] - times[9])
    drift = np.zeros((10, 6))
    drift[:, 1] = 0.03 * np.arange(1, 11)  # the forward track turns 0.03 rad a frame (to 0.33 at 20)
    drift[:, 5] = 1.0
    lost = np.full((10, 6), np.nan)
    ends = {"fwd": np.array([0, 0.33, 0, 0, 0, 1.0]), "bwd": np.full(6, np.nan)}
    fwd, bwd, wb = _anchored(drift, lost, ends, fits, gap, times, w)
    steps = np.diff(np.r_[fits[9, 1], _blend(fwd, bwd, wb)[:, 1], fits[20, 1]])
    assert np.allclose(steps, 0.5 / 11)  # no jump anywhere: the drift (0.17 rad at the end) spread evenly
    # without its pose at the far end (lost there), its last frame in the gap stands in for it: the
    # last step (onto the fit) is then no larger than the others
    fwd, _, _ = _anchored(drift, lost, {"fwd": np.full(6, np.nan), "bwd": np.full(6, np.nan)}, fits, gap, times, w)
    steps = np.diff(np.r_[fits[9, 1], fwd[:, 1], fits[20, 1]])
    assert (steps > 0).all() and steps[-1] <= steps[:-1].min() + 1e-12 and abs(fwd[-1, 1] - 0.5) < 0.02
    # both hold on part of the gap: forward on 10-17, backward on 15-19; the backward weight is 0 up
    # to frame 14 and 1 from 18, in between by time from 14 to 18
    part_f, part_b = drift.copy(), drift + [0, 0.2, 0, 0, 0, 0]
    part_f[8:], part_b[:5] = np.nan, np.nan
    _, _, wb = _anchored(part_f, part_b, ends, fits, gap, times, w)
    assert np.allclose(wb[5:8], [0.25, 0.5, 0.75]) and (wb[:5] == 0).all() and (wb[8:] == 1).all()
    # both over the whole gap: the weight is each frame's place between the two ends, as before
    assert np.allclose(_anchored(drift, drift, ends, fits, gap, times, w)[2], w)


def test_a_drifted_track_is_brought_back_onto_the_head() -> None:
    """A track whose head drifted by a turn growing through the gap: the camera's rotation and its
    centre (model space) turned alike. Pulled onto the fit at the far end, every frame comes back to
    the true pose (the centre too: moving it by a fixed offset shifted the head in the picture); and
    so it does when the other track holds on the last frames only (it was blended over those alone)."""
    from scipy.spatial.transform import Rotation

    times = np.arange(30) / 25.0
    gap = _Gap(10, 20, 9, 3, 20, 26)
    turn = Rotation.from_rotvec(np.outer(0.06 * np.arange(30), [0, 1, 0]))  # the head turns ~3.4° a frame
    truth = np.column_stack([turn.as_rotvec(), turn.apply([0.0, 0.0, 0.6])])  # camera 0.6 m from the head
    w = (times[10:20] - times[9]) / (times[20] - times[9])
    wf = np.r_[w, 1.0]  # the gap's frames and the far end
    drift = Rotation.from_rotvec(np.outer(wf, [0.5, 0.1, 0]))  # to ~29° at the far end
    tracked = np.column_stack([(drift * turn[10:21]).as_rotvec(), drift.apply(truth[10:21, 3:])])
    ends = {"fwd": tracked[10], "bwd": np.full(6, np.nan)}
    fwd, bwd, wb = _anchored(tracked[:10], np.full((10, 6), np.nan), ends, truth, gap, times, w)
    assert np.allclose(_blend(fwd, bwd, wb), truth[10:20], atol=1e-9)
    part = np.full((10, 6), np.nan)
    part[8:] = truth[18:20]  # the backward track lost after two frames
    pose = _blend(*_anchored(tracked[:10], part, ends, truth, gap, times, w))
    assert np.allclose(pose, truth[10:20], atol=1e-9)


def test_mean_pose_over_starts() -> None:
    """The poses of several starts: per frame the mean rotation and translation of those holding it."""
    a = np.array([[0.0, 0.2, 0.0, 0, 0, 1.0], [0.0, 0.4, 0.0, 0, 0, 1.0]])
    b = np.array([[0.0, 0.4, 0.0, 0, 0, 3.0], [np.nan] * 6])
    out = _mean_pose([a, b])
    assert np.allclose(out[0], [0, 0.3, 0, 0, 0, 2.0], atol=1e-9)  # same axis: the mean angle
    # one start lost the track: the mean moves on with the other's motion (+0.2 rad), no jump to it
    assert np.allclose(out[1], [0, 0.5, 0, 0, 0, 2.0], atol=1e-9)
    assert _mean_pose([a]) is a


def test_blend_meets_both_ends() -> None:
    from scipy.spatial.transform import Rotation

    fwd = np.array([[0.0, 0.2, 0.0, 0, 0, 1], [0.0, 0.4, 0.0, 0, 0, 1], [0.0, 0.6, 0.0, 0, 0, 1]])
    bwd = fwd.copy()
    bwd[:, 1] += 0.1  # the backward track is offset by 0.1 rad
    bwd[:, 3] = 1.0
    out = _blend(fwd, bwd, np.array([0.0, 0.5, 1.0]))
    assert np.allclose(out[0], fwd[0]) and np.allclose(out[2], bwd[2])
    mid = Rotation.from_rotvec(out[1, :3]).magnitude()
    assert abs(mid - 0.45) < 1e-9 and abs(out[1, 3] - 0.5) < 1e-12
    lost = bwd.copy()
    lost[1] = np.nan  # one direction lost: the other is used
    assert np.allclose(_blend(fwd, lost, np.array([0.0, 0.5, 1.0]))[1], fwd[1])


@pytest.mark.slow
def test_a_turn_to_full_profile_is_followed_by_flow(shared_dir: Path, tmp_path: Path) -> None:
    """MediaPipe loses the face past ~40-70° of yaw; the frames without landmarks come out within a
    few degrees of the true rotation by flow, where interpolation across them is off by tens."""
    from flame_tracker.camera import to_opencv
    from flame_tracker.evaluation.scenes import turning_head, write_scene_video
    from flame_tracker.model import load_model
    from flame_tracker.video.pipeline import VideoOptions, track_video
    from flame_tracker.video.track import TrackOptions

    model = load_model()
    clip = tmp_path / "turn.mp4"
    rots = write_scene_video(model, turning_head(model, 40), clip)
    base = dict(max_gap_s=4.0)  # the default identity fit: the anchors' accuracy bounds the flow's
    errs, runs = {}, {}
    for name, flow in (("flow", True), ("bridged", False)):
        out_dir = tmp_path / name
        summary = track_video(clip, out_dir, options=TrackOptions(flow=flow, **base),
                              video_options=VideoOptions(overlay=name == "flow"), progress=False)
        t = np.load(out_dir / "tracking.npz")
        ident = np.load(out_dir / "work" / "identity.npz")
        from flame_tracker.camera import Crop

        c = ident["crop"]
        crop = Crop(*c) if "pp" not in ident else Crop(*c, cx=float(ident["pp"][0]), cy=float(ident["pp"][1]))
        _, R, _ = to_opencv(torch.as_tensor(t["pose6"].astype(np.float64)), float(ident["fov"]), crop)
        rel = np.einsum("nji,njk->nik", R.numpy(), rots[t["frame"]])
        errs[name] = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        runs[name] = (summary, t)
    summary, t = runs["flow"]
    gap = ~t["valid"]
    assert gap.sum() >= 8, "the synthetic turn should take the head past the detector"
    assert (t["source"][gap] == "flow").all() and (t["source"][~gap] == "landmarks").all()
    assert summary.n_flow == gap.sum() and summary.n_bridged == 0
    assert (t["flow_inliers"][gap] >= FlowOptions().min_inliers).all() and (t["flow_inliers"][~gap] == 0).all()
    per_frame = np.load(out_dir.parent / "flow" / "frames" / f"{int(t['frame'][np.flatnonzero(gap)[0]]):06d}.npz")
    assert str(per_frame["source"][0]) == "flow"
    flow_err, bridged_err = errs["flow"][gap].mean(), errs["bridged"][gap].mean()
    print(f"gap frames {gap.sum()}: rotation error flow {flow_err:.2f} deg, bridged {bridged_err:.2f} deg")
    assert flow_err < 8.0 and flow_err < 0.5 * bridged_err
    assert (tmp_path / "flow" / "overlay.mp4").is_file()


@pytest.mark.slow
def test_a_face_found_for_a_moment_in_a_profile_is_checked_against_the_flow() -> None:
    """Past a profile MediaPipe sometimes draws a face for a frame that is not there: such landmarks,
    alone inside a gap, are rejected when their fit is turned far from the head followed by flow
    through them (the frame takes the flow's pose); true landmarks there are kept."""
    from scipy.spatial.transform import Rotation

    from flame_tracker.evaluation.scenes import render_scene, turning_head
    from flame_tracker.model import load_model
    from flame_tracker.video.flow import flow_through_gaps, frames_in_memory
    from flame_tracker.video.track import TrackOptions, track_landmarks

    model = load_model()
    specs = turning_head(model, 40)
    shots = [render_scene(model, s, detail=0.25) for s in specs]
    frames = [img for img, _ in shots]
    lmks = np.stack([truth.lmks68_px for _, truth in shots])
    yaw = np.array([s.euler_deg[0] for s in specs])
    times = np.arange(len(specs)) / 30.0
    valid = yaw < 55.0  # the true landmarks stand in for the detector, which stops about there
    k = int(np.flatnonzero(~valid)[2])  # ~70° of yaw, two frames into the gap
    valid[k] = True

    def track(lm: np.ndarray, opts: FlowOptions):
        def filler(identity, raw, valid_, cuts):
            return flow_through_gaps(model, identity, raw, valid_, times, frames_in_memory(frames), opts, cuts=cuts)
        return track_landmarks(model, lm, valid, times, options=TrackOptions(max_gap_s=4.0), image_size=(640, 480),
                               gap_filler=filler)

    def error(fit, rows: list[int]) -> np.ndarray:  # degrees from the true rotation (OpenCV camera)
        from flame_tracker.camera import to_opencv

        R = to_opencv(torch.as_tensor(fit.pose6[rows]), fit.identity.fov, fit.identity.camera_crop)[1].numpy()
        true = np.stack([shots[r][1].R for r in rows])
        return np.degrees((Rotation.from_matrix(R).inv() * Rotation.from_matrix(true)).magnitude())

    wrong = lmks.copy()
    wrong[k] = lmks[0]  # a frontal face where the head is in profile
    fit = track(wrong, FlowOptions())
    assert fit.rejected.tolist() == [k] and not fit.valid[k] and fit.source[k] == "flow"
    near = [k - 2, k - 1, k, k + 1, k + 2]
    unchecked = track(wrong, FlowOptions(probe_s=0.0))  # before: the frame kept its landmarks
    print("rotation error around the frame, checked / not:", error(fit, near).round(1), error(unchecked, near).round(1))
    assert error(fit, near).max() < 6.0
    assert unchecked.source[k] == "landmarks" and error(unchecked, [k])[0] > 30.0
    kept = track(lmks, FlowOptions())  # the true landmarks at that frame agree with the flow
    assert kept.rejected.size == 0 and kept.source[k] == "landmarks" and kept.valid[k]


def test_point_sets_solved_together_are_each_solved_as_alone() -> None:
    """The pose solve pads the sets of a frame's starts into one array; a set's pose and inliers
    are those it gets alone, also where a padding point at the model's (0, 0, 1) would have lain
    exactly on the camera plane (a NaN step that failed the whole set, from a review)."""
    import warnings

    import cv2

    from flame_tracker.video.flow import _solve

    rng = np.random.default_rng(0)
    K = np.array([[300.0, 0, 120], [0, 300.0, 120], [0, 0, 1]])
    R = np.diag([1.0, -1, -1]) @ cv2.Rodrigues(np.array([0.0, np.radians(48.6), 0.0]))[0]
    rvec = cv2.Rodrigues(R)[0]
    R = cv2.Rodrigues(rvec)[0]
    tvec = np.array([[0.01], [-0.02], [-R[2, 2]]])  # (0, 0, 1) lands on z = 0
    sets = []
    for n in (100, 150, 40):
        obj = rng.normal(0, 0.06, (n, 3))
        cam = obj @ R.T + tvec.ravel()
        img = cam[:, :2] / cam[:, 2:] * 300.0 + 120.0 + rng.normal(0, 0.3, (n, 2))
        img[: n // 10] += 25.0  # outliers
        sets.append((obj, img))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero, no NaN
        together = _solve([o for o, _ in sets], [i for _, i in sets], K, [rvec] * 3, [tvec] * 3, FlowOptions())
        for (obj, img), tog in zip(sets, together):
            alone = _solve([obj], [img], K, [rvec], [tvec], FlowOptions())[0]
            assert tog[0] and alone[0]
            np.testing.assert_allclose(tog[1], alone[1], atol=1e-10)
            np.testing.assert_allclose(tog[2], alone[2], atol=1e-10)
            assert (tog[3] == alone[3]).all() and tog[3].sum() >= 0.85 * len(obj)


@pytest.fixture(scope="module")
def turn_and_back():
    """A synthetic head turning fast, then straight back: ``(model, shots, order of the frames)``."""
    from flame_tracker.evaluation.scenes import render_scene, turning_head
    from flame_tracker.model import load_model

    model = load_model()
    specs = turning_head(model, 40)
    order = list(range(3, 13)) + list(range(11, 2, -1))  # turning fast, then straight back
    return model, {k: render_scene(model, specs[k], detail=0.25) for k in set(order)}, order


def _surface(model, shot):
    from flame_tracker.video.flow import HeadSurface

    spec = shot[1].spec
    return HeadSurface.fitted(model, spec.shape, [{"expr": spec.expr, "jaw_pose": np.zeros(3),
                                                   "eye_pose": np.zeros(6)}])[0]


@pytest.mark.slow
def test_a_head_that_turns_back_at_once_is_still_followed(turn_and_back) -> None:
    """Each point starts where the head's motion over the last two frames puts it, and Lucas-Kanade
    then runs without its pyramid; a head that reverses its turn at once (the prediction off by
    twice a frame's motion) is tried again with the pyramid: every frame followed, as without the
    prediction, and within a couple of degrees of the truth."""
    from scipy.spatial.transform import Rotation

    from flame_tracker.video.flow import grey, track_direction

    model, shots, order = turn_and_back
    grays = [grey(shots[k][0], 1.0) for k in order]
    first = shots[order[0]][1]
    surface = _surface(model, shots[order[0]])
    err = {}
    for levels in (0, -1):
        tr = track_direction(surface, grays, first.K, first.R, first.t, FlowOptions(lk_levels_predicted=levels))
        assert np.isfinite(tr.pose6).all(), f"lost frames with lk_levels_predicted={levels}"
        fitted = Rotation.from_rotvec(tr.pose6[:, :3])
        truth = Rotation.from_matrix(np.stack([shots[k][1].R for k in order[1:]]))
        err[levels] = np.degrees((fitted.inv() * truth).magnitude())
    print("rotation error with / without the prediction (deg):", err[0].round(2), err[-1].round(2))
    assert err[0].max() < 2.0 and err[-1].max() < 2.0


@pytest.mark.slow
def test_starts_followed_side_by_side_are_each_followed_as_alone(turn_and_back) -> None:
    """track_starts shares one Lucas-Kanade call and one padded pose solve per frame among the
    starts of a direction; each start's track is the one it has followed alone (track_direction
    from its own frame), including the frames where the prediction is retried with the pyramid."""
    from flame_tracker.video.flow import grey, track_direction, track_starts

    model, shots, order = turn_and_back
    grays = [grey(shots[k][0], 1.0) for k in order]
    begins = [0, 2, 5]  # (different surfaces, point counts and retries)
    surfaces = [_surface(model, shots[order[b]]) for b in begins]
    poses = [(shots[order[b]][1].R, shots[order[b]][1].t) for b in begins]
    K = shots[order[0]][1].K
    together = track_starts(surfaces, poses, begins, grays, K, FlowOptions())
    for b, surface, (R, t), tr in zip(begins, surfaces, poses, together):
        alone = track_direction(surface, grays[b:], K, R, t, FlowOptions())
        assert tr.pose6.shape == alone.pose6.shape == (len(grays) - 1 - b, 6)
        assert np.isfinite(alone.pose6).all()
        np.testing.assert_allclose(tr.pose6, alone.pose6, atol=1e-9)
        assert (tr.inliers == alone.inliers).all()


def test_points_already_followed_are_kept_clear_as_circles_drawn_one_by_one() -> None:
    """The picker keeps new corners a cell away from the points it follows: the discs stamped at
    once are the pixels cv2.circle fills around each centre, centres outside the box included."""
    import cv2

    from flame_tracker.video.flow import _clear_discs

    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(8, 120, 2))
        radius = int(rng.integers(0, 9))
        centres = rng.integers(-20, 140, (int(rng.integers(0, 40)), 2))
        drawn = np.full((h, w), 255, np.uint8)
        for x, y in centres:
            cv2.circle(drawn, (int(x), int(y)), radius, 0, -1)
        stamped = np.full((h, w), 255, np.uint8)
        _clear_discs(stamped, centres, radius)
        np.testing.assert_array_equal(stamped, drawn)
