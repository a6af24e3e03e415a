"""Certified retrieval and near-duplicate detection: a persistent FAISS-backed index of an image folder
(:mod:`.index`) and top-k search with top-1 and threshold certificates (:mod:`.search`).

Needs the ``[retrieval]`` extra (FAISS), imported only when an index is built, searched or loaded.
"""
from .index import FORMAT, KINDS, Index, build_index, find_images, load_index, weights_hash
from .search import Neighbour, QueryResult, search

__all__ = ["Index", "build_index", "load_index", "find_images", "weights_hash", "search", "QueryResult",
           "Neighbour", "KINDS", "FORMAT"]
