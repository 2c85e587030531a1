"""Tests that keep the documentation, the example config and the Dockerfile honest."""
