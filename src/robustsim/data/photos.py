"""Real photos offline: the compatibility front of :mod:`.catalogue`, :mod:`.distortions` and :mod:`.suites`.

Why this module still exists: it used to hold all three (catalogue, distortions, suites) and scripts,
training recipes and tests import from it. The code now lives in

* :mod:`robustsim.data.catalogue` -- photos, licences, the train/held-out split (:func:`split_of`),
  crops;
* :mod:`robustsim.data.distortions` -- the distortion registry (name -> function, strength ranges);
* :mod:`robustsim.data.suites` -- ordering / teacher suites, :class:`RandomCrops`;
* :mod:`robustsim.data.judged` -- the judge-consensus 2AFC suite (the perceptual headline);

and every public name is re-exported here unchanged.
"""
from __future__ import annotations

from .catalogue import (BUILTIN, EXTRA_HELDOUT_MODULUS, HELDOUT, MIN_CROP_STD, PHOTOS_ENV, PhotoSource,  # noqa: F401
                        item_rng, crop_resize, heldout_photos, photo_sources, random_crop,
                        select_photos, split_of, textured_crop, train_photos)
from .distortions import (DISTORTIONS, FAMILIES, KINDS, ORDERING_KINDS, DistortionKind, brightness,  # noqa: F401
                          check_kinds, colour_shift, contrast, distort, elastic, gaussian_blur,
                          gaussian_noise, jpeg, motion_blur, pixelate, posterize, rescale, rotate, salt_pepper,
                          saturation, sharpen, translate, webp)
from .augment import color_jitter  # noqa: F401
from .suites import (OrderingSuite, RandomCrops, TeacherSuite, TripletDataset, ordering_suite,  # noqa: F401
                     teacher_suite)
