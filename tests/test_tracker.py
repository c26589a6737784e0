"""Single-image pipeline: synthetic landmarks (exact recovery, camera exports) and a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.camera import Crop, crop_fov, project_pixels
from flame_tracker.io.results import REFERENCE_KEYS, load_npz
from flame_tracker.tracker import Tracker, fitting_crop


@pytest.fixture(scope="module")
def tracker(shared_dir):
    with Tracker(device="cpu") as tr:
        yield tr


def _synthetic_landmarks(tracker: Tracker, image_size=(640, 480)):
    """Project the ICT model (known identity/expression/camera) into a 640×480 image with a camera
    of the tracker's default kind: principal point at the image centre, ``image_fov`` over the image."""
    model = tracker.model
    g = torch.Generator().manual_seed(0)
    params = dict(shape=torch.randn(1, model.n_shape, generator=g) * 0.5,
                  expr=torch.rand(1, model.n_expr, generator=g) * 0.2)
    out = model.landmarks(**params)
    pose6 = torch.tensor([[0.1, 0.2, 0.0, 0.15, 0.02, 0.95]])
    crop = Crop(170.0, 90.0, 300.0, cx=image_size[0] / 2, cy=image_size[1] / 2)
    fov = crop_fov(crop.size, image_size, tracker.image_fov)
    lmk = project_pixels(out.landmarks.double().cpu(), pose6.double(), fov, crop)[0].numpy()
    iris = project_pixels(out.iris.double().cpu(), pose6.double(), fov, crop)[0].numpy()
    return lmk, iris


def test_fit_landmarks_recovers_synthetic_face(shared_dir, tmp_path, device):
    # the landmarks are the model's own 68 points, so fit with the model's own embedding
    tracker = Tracker(device=device, landmark_embedding="model")
    lmk, iris = _synthetic_landmarks(tracker)
    res = tracker.fit_landmarks(lmk, iris, image_size=(640, 480))
    assert res.reprojection_error_px < 1.0  # exact data: the fit must close to (sub)pixel level
    assert np.nanmean(res.residuals_px[68:]) < 1.0
    # Cameras in original pixels reproduce the fitted landmarks: x ~ K (R X + t).
    cams = res.camera_matrices()
    model = tracker.model
    with torch.no_grad():
        pts = model(shape=torch.as_tensor(res.shape, dtype=torch.float32, device=device),
                    expr=torch.as_tensor(res.exp, dtype=torch.float32, device=device),
                    eye_pose=torch.as_tensor(res.eye_pose, dtype=torch.float32, device=device)
                    ).landmarks[0].double().cpu().numpy()
    cam_pts = pts @ cams["w2c_opencv"][0, :3, :3].T + cams["w2c_opencv"][0, :3, 3]
    uv = cam_pts @ cams["K_px"][0].T
    np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], res.fit_lmks68_px, atol=0.05)
    # OpenGL camera-to-world is the inverse of OpenCV world-to-camera up to the y/z axis flip.
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    np.testing.assert_allclose(cams["c2w_opengl"][0] @ flip @ cams["w2c_opencv"][0], np.eye(4), atol=1e-5)

    paths = res.save(tmp_path, "synthetic", image=np.full((480, 640, 3), 128, np.uint8))
    assert {"npz", "obj", "ply", "overlay", "json"} <= set(paths)
    arrays = load_npz(paths["npz"])
    for key in REFERENCE_KEYS:
        assert key in arrays and arrays[key].shape[0] == 1, key
    assert arrays["shape"].shape == (1, model.n_shape) and arrays["exp"].shape == (1, model.n_expr)
    assert arrays["K"].shape == (1, 3, 3) and arrays["cam"].shape == (1, 6) and arrays["fov"].shape == (1,)
    # lmks_68 are the reference's normalised crop coordinates; *_px the original pixels.
    crop = Crop(*arrays["crop"][0])
    np.testing.assert_allclose(crop.from_ndc(torch.as_tensor(arrays["lmks_68"][0])).numpy(), lmk, atol=1e-3)
    np.testing.assert_allclose(arrays["lmks_68_px"][0], lmk, atol=1e-3)
    assert float(np.abs(arrays["lmks_68"]).max()) < 1.0


def test_a_given_model_is_never_moved(shared_dir, device):
    # Module.to works in place: a tracker on another device works on a copy, the caller's model stays
    from flame_tracker.model import load_model

    model = load_model()
    tr = Tracker(model, device=device)
    assert model.device.type == "cpu" and tr.model.device.type == device.type
    assert (tr.model is model) == (device.type == "cpu")
    assert Tracker(model).model is model  # no device given: the model's own


def test_fitting_crop_frames_the_face_like_the_reference():
    lmk = np.zeros((68, 2))
    lmk[36:42] = (100.0, 100.0)
    lmk[42:48] = (160.0, 100.0)
    lmk[48], lmk[54] = (110.0, 170.0), (150.0, 170.0)
    crop = fitting_crop(lmk)
    # half side = max(2*60, 1.8*70) * 1.3 = 163.8; centre = eye centre + 0.1 * eye-to-mouth.
    assert crop.size == pytest.approx(2 * 163.8)
    assert crop.x0 + crop.size / 2 == pytest.approx(130.0) and crop.y0 + crop.size / 2 == pytest.approx(107.0)
    with pytest.raises(ValueError, match="degenerate"):
        fitting_crop(np.zeros((68, 2)))


def test_bad_landmarks_are_refused(tracker):
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        tracker.fit_landmarks(np.zeros((51, 2)), image_size=(10, 10))


def test_no_face_is_a_clear_error(tracker):
    from flame_tracker.detection import NoFaceError

    with pytest.raises(NoFaceError, match="No face"):
        tracker.fit_image(np.full((256, 256, 3), 200, np.uint8))


@pytest.mark.slow
def test_fit_real_photo(tracker, shared_dir, tmp_path):
    res = tracker.fit_image(shared_dir / "images" / "woman.jpg")
    w, h = res.image_size
    assert (w, h) == (600, 900)
    # A real face: the 68 fitted points land within ~1.5 % of the face crop of the detections.
    assert res.reprojection_error_px < 0.015 * res.crop[2]
    assert set(res.timings) >= {"detect", "stage1", "stage2"}
    ov = res.overlay(tracker.last_image)
    assert ov.shape == (h, w, 3) and not np.array_equal(ov, tracker.last_image)


def test_python_api_inputs_and_results(tracker, shared_dir, tmp_path):
    """What a Python caller hands the tracker (from a user trial): pixels as float in [0, 255] or as a PIL
    image fit as the uint8 array does; anything else, or one photo given to fit_same_person, is a clear
    error; a Result's triangles cannot be edited under every later fit; the overlay's picture must be the
    fitted one (a path works); ``last_image`` is per thread; a stem with a suffix is not doubled."""
    import threading

    from PIL import Image

    from flame_tracker import Tracker as TopLevelTracker
    from flame_tracker.errors import InputError
    from flame_tracker.io.images import ImageError
    from flame_tracker.rendering.overlay import COLOR_FITTED

    assert TopLevelTracker is Tracker
    path = shared_dir / "images" / "woman.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    ref = tracker.fit_image(rgb)
    over = rgb / 255.0
    over[0, 0] = 1.2  # a sharpened [0, 1] picture overshoots here and there: still [0, 1]
    for given in (rgb.astype(np.float32), Image.open(path), over, torch.as_tensor(rgb.copy())):
        got = tracker.fit_image(given)
        np.testing.assert_allclose(got.fit_lmks68_px, ref.fit_lmks68_px, atol=1e-3)
    for bad, what in ((None, "NoneType"), (b"\x89PNG", "bytes"), (rgb > 128, "boolean"),
                      (rgb.astype(np.float32) * 100, "float values up to")):
        with pytest.raises(ImageError, match=what):
            tracker.fit_image(bad)
    with pytest.raises(InputError, match="list of photos"):
        tracker.fit_same_person(str(path))
    ref.faces[:] = 0  # the caller's own copy: later fits keep the model's triangles
    assert np.array_equal(tracker.fit_image(rgb).faces, tracker.model.faces.numpy())
    ref = tracker.fit_image(rgb)
    with pytest.raises(ImageError, match="the fitted one 600×900"):
        ref.overlay(rgb[:, :500])
    paths = ref.save(tmp_path, "photo", image=path)
    assert sorted(p.name for p in paths.values()) == ["photo.json", "photo.npz", "photo.obj", "photo.ply",
                                                      "photo_overlay.png"]
    small = ref.overlay(rgb, max_side=300)
    assert small.shape == (300, 200, 3)
    # the fitted nose tip lands where the full-size overlay puts it, scaled (its red dot)
    big = ref.overlay(rgb)
    nose = ref.matched_lmks68_px[30]
    assert (big[int(nose[1]), int(nose[0])] == COLOR_FITTED).all()
    assert (small[int(nose[1] / 3), int(nose[0] / 3)] == COLOR_FITTED).all()
    # last_image: each thread's own picture
    seen = {}

    def fit(name: str, picture: np.ndarray) -> None:
        tracker.last_image = picture
        seen[name] = tracker.last_image

    grey = np.full_like(rgb, 90)
    threads = [threading.Thread(target=fit, args=(n, pic)) for n, pic in (("a", rgb), ("b", grey))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"] is rgb and seen["b"] is grey
    assert tracker.last_image is not None  # another thread's (the last), where this one fitted nothing
    import copy
    import pickle

    assert copy.deepcopy(tracker).fov == tracker.fov and pickle.loads(pickle.dumps(tracker)).fov == tracker.fov
    for bad_fov in (-5, 0.5, 200):
        with pytest.raises(InputError, match="fov must be in"):
            Tracker(tracker.model, fov=bad_fov, image_fov=None)


def test_a_photo_stored_upside_down_is_searched_turned_over(tracker, shared_dir):
    """MediaPipe finds no face in ffhq_00001 turned over; the tracker searches it turned back and fits
    the face as in the upright photo (the same points, turned; the head's roll 180°)."""
    from PIL import Image

    from flame_tracker.camera import pose6_to_cam

    rgb = np.asarray(Image.open(shared_dir / "images" / "ffhq_00001.png").convert("RGB"))
    upside_down = np.ascontiguousarray(rgb[::-1, ::-1])
    assert not tracker.finder.find(upside_down)
    up, down = tracker.fit_image(rgb), tracker.fit_image(upside_down)
    size = np.array(up.image_size, dtype=np.float64)
    np.testing.assert_allclose(size - down.fit_lmks68_px, up.fit_lmks68_px, atol=0.05)
    np.testing.assert_allclose(size - down.lmks68_px, up.lmks68_px, atol=1e-3)
    roll = float(pose6_to_cam(torch.as_tensor(down.pose6, dtype=torch.float64))[0, 2])
    assert abs(abs(roll) - np.pi) < 0.1


def test_a_photo_stored_upside_down_with_a_face_drawn_across_it_is_turned_back(tracker, shared_dir):
    """In ffhq_00000 turned over MediaPipe draws an upright face across the turned one (it finds a
    face, a wrong one); the face detector rates that face turned, so the tracker searches the photo
    turned back and fits the face as in the upright photo."""
    from PIL import Image

    rgb = np.asarray(Image.open(shared_dir / "images" / "ffhq_00000.png").convert("RGB"))
    upside_down = np.ascontiguousarray(rgb[::-1, ::-1])
    drawn = tracker.finder.find(upside_down)
    assert drawn  # (the face drawn across the turned one)
    up, down = tracker.fit_image(rgb), tracker.fit_image(upside_down)
    size = np.array(up.image_size, dtype=np.float64)
    iod = np.linalg.norm(up.lmks68_px[45] - up.lmks68_px[36])
    assert np.linalg.norm(size - drawn[0].lmks68 - up.lmks68_px, axis=1).mean() > 0.5 * iod
    np.testing.assert_allclose(size - down.lmks68_px, up.lmks68_px, atol=1e-3)
    # the fit from the same points turned (its head rolled by 180°) ends within the solver's tolerance
    # of the upright one: 1.5 px at most here, 0.003-0.03 px on three other photos
    assert np.linalg.norm(size - down.fit_lmks68_px - up.fit_lmks68_px, axis=1).mean() < 0.01 * iod


def test_rigid_refinement_runs_in_the_last_round_of_single_photos_only(tracker, monkeypatch):
    """Stage 2 refines the head's rigid pose for independent photos, in the last round only, and
    not when several photos share one identity (it made that identity worse, docs/accuracy.md)."""
    import flame_tracker.tracker as tracker_module

    seen: list[tuple[bool, bool]] = []
    real = tracker_module.fit_stage2

    def spy(*args, options=None, **kw):
        seen.append((bool(options.fit_rigid), bool(options.shared_shape)))
        return real(*args, options=options, **kw)

    monkeypatch.setattr(tracker_module, "fit_stage2", spy)
    lmk, iris = _synthetic_landmarks(tracker)
    assert tracker.stage2.fit_rigid and tracker.rounds == 2
    tracker.fit_landmarks(lmk, iris, image_size=(640, 480))
    assert seen == [(False, False), (True, False)]
    seen.clear()
    face = (lmk, iris, (640, 480), None, (), None)
    results = tracker._fit_faces([face, face], shared_shape=True)
    assert seen == [(False, True), (False, True)]
    assert np.array_equal(results[0].shape, results[1].shape)


def test_options_that_need_a_detector_embedding_say_so(tmp_path, monkeypatch) -> None:
    """Dense points and the view table need the model's detector embedding: without one (a model
    never run through `flame-tracker embed`), asking for them is an error, not a silent fallback to
    the model's own 68 points."""
    from flame_tracker.errors import InputError
    from flame_tracker.model import load_model
    from flame_tracker.model.fixtures import write_flame_model

    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path / "cache"))
    model = load_model(write_flame_model(tmp_path / "m", "tiny", n_expr=10, mediapipe=False))
    for kw, what in ((dict(landmarks="dense"), "landmarks='dense'"),
                     (dict(landmark_embedding="views"), "landmark_embedding='views'")):
        with pytest.raises(InputError, match=f"{what} needs a detector embedding"):
            Tracker(model, **kw)
    assert Tracker(model).landmark_embedding == "model"  # the default falls back, as documented
