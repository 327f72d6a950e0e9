"""Key/value cache helpers for the transformers backend's decode loop (hf_backend.py).

transformers' DynamicLayer appends each decode step with torch.cat, copying the whole cache every step;
profiled on the toy workload that copy was the largest single cost after the matmuls (issue 19). A
GrowingLayer holds its keys and values as views of a buffer with room to spare, so a step writes one
column in place and the buffer is copied only when it doubles. Its buffers also have room for a whole batch
of rows: in refill, finished rows leave by moving the few rows past the new batch size into their slots
(drop_rows) and joining rows are written into the spare rows (join_caches), so neither copies the running
cache. Joining and trimming batches lives here too.
"""

from __future__ import annotations

_GROWING = None


def growing_layer_class():
    global _GROWING
    if _GROWING is None:
        import torch
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            def set(self, keys, values, length=None, rows=None):
                """Hold buffers whose first `rows` rows and `length` columns (all by default) are the cache."""
                self._k, self._v = keys, values
                self._len = keys.shape[-2] if length is None else length
                self._rows = keys.shape[0] if rows is None else rows
                self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
                self._views()

            def _views(self):
                self.keys = self._k[:self._rows, :, :self._len]
                self.values = self._v[:self._rows, :, :self._len]

            def update(self, key_states, value_states, *args, **kwargs):
                end = self._len + key_states.shape[-2]
                if end > self._k.shape[-2]:  # double: each column is copied O(1) times on average
                    k, v = _buffer(self._k, self._k.shape[0], end, True), _buffer(self._v, self._v.shape[0], end, True)
                    k[:self._rows, :, :self._len], v[:self._rows, :, :self._len] = self.keys, self.values
                    self._k, self._v = k, v
                self._k[:self._rows, :, self._len:end] = key_states
                self._v[:self._rows, :, self._len:end] = value_states
                self._len = end
                self._views()
                return self.keys, self.values

            def batch_select_indices(self, indices, capacity: int = 0):
                """Rows `indices` into new buffers of the same room (and room for `capacity` rows); only the
                used columns are copied."""
                rows = max(len(indices), capacity)
                k = _buffer(self._k, rows, self._len, True, self._k.shape[-2])
                v = _buffer(self._v, rows, self._len, True, self._v.shape[-2])
                torch.index_select(self.keys, 0, indices, out=k[:len(indices), :, :self._len])
                torch.index_select(self.values, 0, indices, out=v[:len(indices), :, :self._len])
                self.set(k, v, self._len, len(indices))

            def move_rows(self, src, dst, rows: int):
                """Rows `src` into slots `dst` (used columns only); the first `rows` rows are the cache after."""
                if len(src):
                    self._k[dst, :, :self._len] = self._k[src, :, :self._len]
                    self._v[dst, :, :self._len] = self._v[src, :, :self._len]
                self._rows = rows
                self._views()

            def fits(self, rows: int, width: int) -> bool:
                return self._rows + rows <= self._k.shape[0] and width <= self._len

            def append(self, keys, values, index):
                """Rows `index` of `keys`/`values` (no wider than the cache) after the cache's rows, in the
                buffer's spare rows: right-aligned with the cache's columns, zeros to their left."""
                a, b = self._rows, self._rows + len(index)
                for buf, src in ((self._k, keys), (self._v, values)):
                    _right_align(torch, buf[a:b, :, :self._len], src, index)
                self._rows = b
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


def _buffer(like, rows: int, width: int, grow: bool, capacity: int = 0):
    """An empty key or value buffer shaped like `like` for `rows` rows and `width` columns, with room to grow
    (as much again, at least 64 columns) when the layer grows in place."""
    shape = list(like.shape)
    shape[0], shape[-2] = rows, max(capacity, width + max(64, width) if grow else width)
    return like.new_empty(shape)


def _grows(layer) -> bool:
    return isinstance(layer, growing_layer_class())


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


def select_rows_into(cache, index, capacity: int):
    """Rows `index` of `cache`, in place; GrowingLayers get buffers with room for `capacity` rows."""
    for layer in _layers(cache):
        if _grows(layer):
            layer.batch_select_indices(index, capacity)
        else:
            layer.batch_select_indices(index)


def cache_layers(cache):
    """The cache's layers, each with plain `keys` and `values` (for callers outside this module: the tests)."""
    return _layers(cache)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        raise RuntimeError(f"refill needs a cache of plain key/value layers, not {type(cache).__name__}")
    return layers


def _set(layer, keys, values, width=None, rows=None):
    """Give a layer new keys and values: buffers whose first `rows` rows and `width` columns (all by default)
    are the cache."""
    if hasattr(layer, "set"):
        layer.set(keys, values, width, rows)
    else:
        layer.keys, layer.values = keys[:rows, :, :width], values[:rows, :, :width]


def _right_align(torch, dst, src, index=None):
    """Rows `index` of `src` (all by default) in `dst`, its columns right-aligned, zeros to their left."""
    w = src.shape[-2]
    dst[..., :dst.shape[-2] - w, :].zero_()
    if index is None:
        dst[..., dst.shape[-2] - w:, :].copy_(src)
    else:
        torch.index_select(src, 0, index, out=dst[..., dst.shape[-2] - w:, :])


def join_caches(torch, cache, mask, new_cache, new_mask, new_rows=None):
    """One left-padded cache and rows `new_rows` of another (all rows by default; an index may repeat a row)
    as one. Where the running cache's buffers have spare rows and the new rows are no wider than it (the
    usual case in refill: rows leave first, kv_cache.drop_rows), the new rows are written into those spare
    rows and nothing else is copied. Otherwise both sides go right-aligned into a new buffer written once
    (GrowingLayers get room to grow, so the next decode step does not copy it again), the narrower side's
    left padding zeros, masked out, and columns at the left that no row attends to are dropped."""
    rows_new = new_mask.shape[0] if new_rows is None else len(new_rows)
    layers, new_layers = _layers(cache), _layers(new_cache)
    if all(_grows(layer) and layer.fits(rows_new, new_mask.shape[1]) for layer in layers):
        index = torch.arange(rows_new, device=mask.device) if new_rows is None else new_rows
        for layer, new in zip(layers, new_layers):
            layer.append(new.keys, new.values, index)
        new_mask = new_mask[index]
        left = new_mask.new_zeros((rows_new, mask.shape[1] - new_mask.shape[1]))
        return cache, torch.cat([mask, torch.cat([left, new_mask], 1)])
    if new_rows is not None:
        new_mask = new_mask[new_rows]
    start = int(mask.any(0).int().argmax())
    mask = mask[:, start:]
    width, new_width = mask.shape[1], new_mask.shape[1]
    full, rows = max(width, new_width), mask.shape[0]

    for layer, new in zip(layers, new_layers):
        bufs = []
        total = rows + new_mask.shape[0]
        for old, add in ((layer.keys, new.keys), (layer.values, new.values)):
            capacity = max(total, layer._k.shape[0]) if _grows(layer) else total  # keep the spare rows
            buf = _buffer(old, capacity, full, _grows(layer))
            _right_align(torch, buf[:rows, :, :full], old[:, :, start:])
            _right_align(torch, buf[rows:total, :, :full], add, new_rows)
            bufs.append(buf)
        _set(layer, bufs[0], bufs[1], full, total)

    def pad(m, w):
        return torch.cat([m.new_zeros((m.shape[0], full - w)), m], 1) if w < full else m

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
        bufs = []
        for t in (layer.keys, layer.values):
            buf = _buffer(t, t.shape[0], width, _grows(layer))
            torch.gather(t, 2, index, out=buf[..., :width, :])
            bufs.append(buf)
        _set(layer, bufs[0], bufs[1], width)
    return cache, new_mask


def drop_rows(torch, cache, keep: list[int]) -> list[int]:
    """Keep rows `keep` (ascending) of the batch, moving as few as possible: kept rows beyond the new batch
    size fill the slots of dropped rows below it, and the batch is its first len(keep) rows after.
    So dropping finished rows copies about as many rows as finished, not the whole cache. Returns the old row
    now in each slot, to reorder the batch's other per-row tensors alike."""
    size, kept = len(keep), set(keep)
    holes = [i for i in range(size) if i not in kept]
    order = list(range(size))
    movers = [r for r in keep if r >= size]
    for hole, row in zip(holes, movers):
        order[hole] = row
    layers = _layers(cache)
    device = layers[0].keys.device if layers else None
    src, dst, index = (torch.tensor(x, device=device) for x in (movers, holes, order))
    for layer in layers:
        if hasattr(layer, "move_rows"):
            layer.move_rows(src, dst, size)
        else:
            layer.batch_select_indices(index)
    return order


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
