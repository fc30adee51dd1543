"""Localization-aware active learning for YOLOX detectors, on Ray and Hydra.

A round flows one way: pool manifest -> score -> detections -> select -> selection -> export
pre-annotations -> labels -> train -> checkpoint -> evaluate. Each stage is one module here.
"""
