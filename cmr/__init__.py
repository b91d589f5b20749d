"""cmr: cardiac MR short-axis segmentation with a from-scratch U-Net.

This package holds the *data side* of the project and deliberately depends
only on numpy, scipy, Pillow and (for the ACDC converter) nibabel:

* :mod:`cmr.data`     -- loading PNG data sets (coursework and flat layouts),
  patient-wise splits and minibatch iteration;
* :mod:`cmr.phantom`  -- synthetic short-axis slices for tests and demos;
* :mod:`cmr.augment`  -- random geometric and intensity augmentation;
* :mod:`cmr.metrics`  -- Dice and 95th-percentile Hausdorff distance;
* :mod:`cmr.prepare`  -- ``python -m cmr.prepare acdc SRC OUT`` converter.

Label convention everywhere: 0 background, 1 right ventricle (RV),
2 myocardium (Myo), 3 left-ventricle cavity (LV).
"""

#: Name of each label value, indexed by the value itself.
CLASS_NAMES = ("background", "RV", "Myo", "LV")
