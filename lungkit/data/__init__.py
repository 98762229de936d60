"""Readers and writers: every source becomes the kit dataset format (see :mod:`lungkit.data.kit_dataset`)."""
