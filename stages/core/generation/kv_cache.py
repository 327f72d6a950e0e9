"""Key/value cache helpers for the transformers backend's decode loop (hf_backend.py).

transformers' DynamicLayer appends each decode step with torch.cat, copying the whole cache every step;
profiled on the toy workload that copy was the largest single cost after the matmuls (issue 19). A
GrowingLayer holds its keys and values as views of a buffer with room to spare, so a step writes one
column in place and the buffer is copied only when it doubles. Joining and trimming batches (refill)
lives here too.
"""

from __future__ import annotations

_GROWING = None


def growing_layer_class():
    global _GROWING
    if _GROWING is None:
        import torch
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            def set(self, keys, values):
                self._k, self._v, self._len = keys, values, keys.shape[-2]
                self.keys, self.values = keys, values
                self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

            def _views(self):
                self.keys, self.values = self._k[..., :self._len, :], self._v[..., :self._len, :]

            def update(self, key_states, value_states, *args, **kwargs):
                end = self._len + key_states.shape[-2]
                if end > self._k.shape[-2]:  # double: each column is copied O(1) times on average
                    room = max(64, self._len) + key_states.shape[-2]
                    pad = list(self._k.shape)
                    pad[-2] = room
                    self._k = torch.cat([self._k[..., :self._len, :], self._k.new_empty(pad)], dim=-2)
                    self._v = torch.cat([self._v[..., :self._len, :], self._v.new_empty(pad)], dim=-2)
                self._k[..., self._len:end, :] = key_states
                self._v[..., self._len:end, :] = value_states
                self._len = end
                self._views()
                return self.keys, self.values

            def batch_select_indices(self, indices):
                self._k, self._v = self._k[indices], self._v[indices]
                self._views()

            def trim_left(self, start: int):
                self._k, self._v, self._len = self._k[:, :, start:], self._v[:, :, start:], self._len - start
                self._views()

        _GROWING = GrowingLayer
    return _GROWING


def make_growing(cache):
    """Swap a DynamicCache's plain layers for GrowingLayers over the same tensors (in place)."""
    from transformers.cache_utils import DynamicLayer

    cls = growing_layer_class()
    for i, layer in enumerate(_layers(cache)):
        if type(layer) is DynamicLayer and layer.is_initialized:
            new = cls()
            new.set(layer.keys, layer.values)
            cache.layers[i] = new
    return cache


def select_rows(cache, index):
    """A new cache holding rows `index` of `cache` (a copy); `cache` itself is left intact, so a window's
    prefilled heads can serve several admissions. Each layer keeps its type and settings."""
    import copy

    new = copy.copy(cache)
    new.layers = []
    for layer in _layers(cache):
        row = copy.copy(layer)
        _set(row, layer.keys[index], layer.values[index])
        new.layers.append(row)
    return new


def cache_layers(cache):
    """The cache's layers, each with plain `keys` and `values` (for callers outside this module: the tests)."""
    return _layers(cache)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        raise RuntimeError(f"refill needs a cache of plain key/value layers, not {type(cache).__name__}")
    return layers


def _set(layer, keys, values):
    if hasattr(layer, "set"):
        layer.set(keys, values)
    else:
        layer.keys, layer.values = keys, values


def join_caches(torch, cache, mask, new_cache, new_mask):
    """Rows of two left-padded caches as one: the narrower side is padded on the left (masked out)."""
    width, new_width = mask.shape[1], new_mask.shape[1]
    full = max(width, new_width)

    def pad(t, w):  # left-pad the sequence axis (dim -2 of keys/values, dim 1 of the mask)
        if w == full:
            return t
        shape = list(t.shape)
        axis = 1 if t.dim() == 2 else -2
        shape[axis] = full - w
        return torch.cat([t.new_zeros(shape), t], dim=axis)

    for layer, new in zip(_layers(cache), _layers(new_cache)):
        _set(layer, torch.cat([pad(layer.keys, width), pad(new.keys, new_width)]),
             torch.cat([pad(layer.values, width), pad(new.values, new_width)]))
    return cache, torch.cat([pad(mask, width), pad(new_mask, new_width)])


def compact(torch, cache, mask):
    """Each row's own columns only, left-padded to the longest row: after a shared-prefix prefill every row
    holds its root's whole width and reads its own slice through the mask, so a state near the prompt would
    attend over (and pay for) the rest of its trajectory at every decode step. Rows are left-padded, so the
    padding of rows that outlive the long ones can be trimmed (trim_left). Same keys and values at the same
    positions; only masked-out columns move or go."""
    lengths = mask.sum(1)
    width = int(lengths.max())
    new_mask = (torch.arange(width, device=mask.device) >= (width - lengths).unsqueeze(1)).to(mask.dtype)
    if width == mask.shape[1] and torch.equal(new_mask, mask):
        return cache, mask
    # the attended columns in order, left-padded: rank r of a row's attended columns lands at width - len + r
    order = torch.argsort(mask, dim=1, stable=True)[:, -width:]  # zeros first, then attended columns in order
    for layer in _layers(cache):
        index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        _set(layer, layer.keys.gather(2, index), layer.values.gather(2, index))
    return cache, new_mask


def trim_left(cache, mask):
    """Drop leading columns no running row attends to (left by rows that finished)."""
    start = int(mask.any(0).int().argmax())
    if start == 0:
        return cache, mask
    for layer in _layers(cache):
        if hasattr(layer, "trim_left"):
            layer.trim_left(start)
        else:
            _set(layer, layer.keys[:, :, start:], layer.values[:, :, start:])
    return cache, mask[:, start:]
