"""Annotation file formats: Pascal VOC, COCO, Label Studio and CVAT writers and readers, the VOCdevkit merge, and the annotators' delivery readers (delivery.py)."""
