"""Vendor wire-protocol profiles: which call a request is, and meters for its response."""
