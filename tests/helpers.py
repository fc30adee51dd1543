"""Small generators shared by tests: images and label tables built in the test, never downloaded."""
from __future__ import annotations
