"""CPU (and CUDA) rendering: a vectorised z-buffer rasteriser (non-differentiable visibility),
differentiable perspective-correct barycentrics, attribute interpolation and SH shading, face masks
from landmarks, and overlay pictures."""

from flame_tracker.rendering.differentiable import (
    SH_CONSTANTS,
    barycentrics,
    interpolate,
    pixel_albedo,
    render,
    sample_texture,
    sh_basis,
    sh_shading,
    to_image,
    vertex_normals,
)
from flame_tracker.rendering.mask import face_mask
from flame_tracker.rendering.overlay import draw_points, render_overlay, shade_mesh
from flame_tracker.rendering.raster import Fragments, face_orientation, rasterize

__all__ = [
    "SH_CONSTANTS",
    "Fragments",
    "barycentrics",
    "draw_points",
    "face_mask",
    "face_orientation",
    "interpolate",
    "pixel_albedo",
    "rasterize",
    "render",
    "render_overlay",
    "sample_texture",
    "shade_mesh",
    "sh_basis",
    "sh_shading",
    "to_image",
    "vertex_normals",
]
