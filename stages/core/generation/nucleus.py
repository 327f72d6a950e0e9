"""Top-p (nucleus) sampling's sorted head of each row, without sorting the whole vocabulary (issue 19)."""

from __future__ import annotations


def top_p_head(torch, probs, top_p: float, k: int = 64):
    """Each row's probabilities sorted descending, with their token ids, cut after the last column top-p can keep.

    A full sort of a 49k vocabulary was 23% of SmolLM2's decode time on CPU (bench/README.md); `topk` of a few
    dozen is ~35x cheaper. The cut is taken only where it changes nothing the sampler sees: the first k sorted
    values are the same floats, CPU cumsum of a prefix equals the prefix of the cumsum, every column after the
    cut has mass before it >= top_p (so is masked) with a margin for rounding, and no kept token ties its
    neighbour (a tie's order is the sort's own choice). Anything else, or a GPU, takes the full sort.
    """
    width = probs.shape[-1]
    while probs.device.type == "cpu" and k < width:
        vals, ids = probs.topk(k, dim=-1)
        before = vals.cumsum(-1) - vals
        if bool((before[:, -1] >= top_p + 1e-4).all()):  # every later column is masked too
            kept = before[:, :-1] < top_p
            if bool(((vals[:, :-1] == vals[:, 1:]) & kept).any()):
                break
            return vals, ids
        k *= 4
    return probs.sort(dim=-1, descending=True)
