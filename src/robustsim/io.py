"""The former name of :mod:`robustsim.images` (it shadowed the standard library's ``io`` inside the
package). Kept so scripts written against ``robustsim.io`` still run; new code imports ``robustsim.images``."""
from .images import *  # noqa: F401,F403
from .images import IMAGE_SUFFIXES, MIN_IMAGE_SIDE, pixel_limit  # noqa: F401
