"""Tests of the light meter package."""
