"""Experiments: one module per kind of experiment, each a paper's recipe + a run profile + data -> results files.

- :mod:`~lungkit.experiments.segmentation`: a segmentation model trained by a paper's recipe and scored per image
  (papers 001 and 004 on Lung-RADS slices; paper 003's U-Net baseline on LUNA16 nodule windows).
- :mod:`~lungkit.experiments.prompted`: zero-shot box-prompted segmentation (SAM, paper 003) and its no-model
  baseline, the ellipse inscribed in the box.
- :mod:`~lungkit.experiments.classification`: a classifier of nodule crops (paper 003's DenseNet-121).

A new kind (CT + PET, set prediction, classifiers of segmented tumours) gets a new module here. Data preparation
lives in :mod:`lungkit.data`, every figure in :mod:`lungkit.figures`.
"""
