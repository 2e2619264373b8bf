"""Overhead and scaling benchmarks of the nnwatch agent against a plain training loop and its peers.

Run ``python -m benchmarks.run`` (``make bench``); ``--quick`` for a two-minute smoke run.
"""
