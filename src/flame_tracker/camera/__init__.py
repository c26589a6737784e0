"""Camera model: the reference tracker's camera (exact, docs/reference.md §3) and conversions to
OpenCV / OpenGL / head-centric cameras in original image pixels (through a :class:`Crop`)."""

from flame_tracker.camera.convert import (
    Crop,
    crop_fov,
    fov_from_intrinsics,
    from_head_centric,
    intrinsics_pixels,
    opencv_to_pose6,
    opengl_c2w_to_pose6,
    pose6_to_opencv,
    project_pixels,
    to_head_centric,
    to_opencv,
    to_opengl_c2w,
)
from flame_tracker.camera.reference import (
    DEFAULT_FOV,
    FOV_MAX,
    FOV_MIN,
    REFERENCE_SIZE,
    ZFAR,
    ZNEAR,
    build_intrinsics,
    cam_to_pose6,
    default_distance,
    euler_to_matrix,
    euler_to_rotvec,
    focal_to_fov,
    fov_to_focal,
    matrix_to_euler,
    matrix_to_rotvec,
    ndc_scale,
    ndc_to_pixels,
    pixels_to_ndc,
    pose6_to_cam,
    project_ndc,
    projection_matrix,
    rotvec_to_euler,
    rotvec_to_matrix,
    skew,
    world_to_view,
)

__all__ = [
    "Crop", "crop_fov", "fov_from_intrinsics", "from_head_centric", "intrinsics_pixels", "opencv_to_pose6",
    "opengl_c2w_to_pose6", "pose6_to_opencv", "project_pixels", "to_head_centric", "to_opencv",
    "to_opengl_c2w", "DEFAULT_FOV", "FOV_MAX", "FOV_MIN", "REFERENCE_SIZE", "ZFAR", "ZNEAR",
    "build_intrinsics", "cam_to_pose6", "default_distance", "euler_to_matrix", "euler_to_rotvec",
    "focal_to_fov", "fov_to_focal", "matrix_to_euler", "ndc_scale", "matrix_to_rotvec", "ndc_to_pixels",
    "pixels_to_ndc", "pose6_to_cam", "project_ndc", "projection_matrix", "rotvec_to_euler",
    "rotvec_to_matrix", "skew", "world_to_view",
]
