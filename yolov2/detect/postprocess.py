"""Darknet's detection post-processing: boxes from the region output, letterbox undo, NMS, output lines.

Reference: darknet `src/region_layer.c` (`get_region_detections`, `correct_region_boxes`),
`src/box.c` (`do_nms_sort`, `do_nms_obj`, `nms_comparator`), `examples/detector.c`
(`print_detector_detections`), `src/image.c` (`draw_detections`).

Every cell and anchor is a detection slot, `n = A*H*W` of them per image, in darknet's slot order
`i = a*H*W + row*W + col`. Batched tensors are (N, n, ...). Box conventions: `region_boxes` gives
normalised centre-size `(x, y, w, h)` relative to the network input; `correct_region_boxes` maps
them to normalised centre-size relative to the original image (darknet's `relative=1`);
`to_pixels` gives pixel centre-size (`relative=0`); `comp4_corners` gives VOC's 1-based pixel corners.
Thresholds compare in float32, as darknet's `float thresh` does. `detections_from_output` runs the
whole chain on a batch and gives one `Detections` per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from yolov2.darknet.boxes import box_iou, box_iou_matrix
from yolov2.darknet.region import pred_boxes, split_entries
from yolov2.data.image import letterbox_geometry
from yolov2.detect.evaluate import ClassDetections


def _f32(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


def region_boxes(output: Tensor, anchors: Tensor) -> Tensor:
    """Boxes of every slot: activated output (N, A*(5+C), H, W) -> (N, A*H*W, 4).

    Normalised centre-size relative to the network input (`get_region_box`), slot order a, row, col.
    """
    return pred_boxes(output, anchors).flatten(1, 3)  # (N, A, H, W, 4) -> (N, n, 4)


def region_scores(output: Tensor, num: int, thresh: float) -> tuple[Tensor, Tensor]:
    """Objectness (N, n) and class probabilities (N, n, C) as `get_region_detections` keeps them.

    objectness = σ(to) if > thresh else 0; prob[c] = objectness*class[c] if > thresh else 0
    (all zero when the objectness is).
    """
    z = split_entries(output, num)  # (N, A, 5+C, H, W)
    obj = z[:, :, 4].flatten(1)  # (N, n)
    cls = z[:, :, 5:].permute(0, 1, 3, 4, 2).flatten(1, 3)  # (N, n, C)
    t = _f32(thresh).to(output.device)
    obj = torch.where(obj > t, obj, torch.zeros_like(obj))
    prob = obj.unsqueeze(-1) * cls
    prob = torch.where((prob > t) & (obj.unsqueeze(-1) != 0), prob, torch.zeros_like(prob))
    return obj, prob


def correct_region_boxes(boxes: Tensor, w, h, netw: int, neth: int) -> Tensor:
    """Undo the letterbox of w x h images: (N, n, 4) boxes relative to the network input -> to the image.

    w, h: ints or (N,) arrays. Normalised centre-size in and out. Darknet's arithmetic: the shift
    uses the exact half `(netw - new_w)/2.` although `letterbox_image` pasted at the integer offset
    (half a pixel apart when the padding is odd). With (w, h) = (netw, neth) this is the identity.
    """
    w, h = np.broadcast_to(w, boxes.shape[:1]), np.broadcast_to(h, boxes.shape[:1])
    sizes = [letterbox_geometry(int(a), int(b), netw, neth)[:2] for a, b in zip(w, h, strict=True)]
    new_w, new_h = np.array(sizes).reshape(-1, 2).T

    def col(v, dtype) -> Tensor:  # per-image constants as an (N, 1) column
        v = np.array(np.broadcast_to(v, boxes.shape[:1]))
        return torch.as_tensor(v, dtype=dtype, device=boxes.device).view(-1, 1)

    f32 = np.float32
    sx = col(new_w.astype(f32) / f32(netw), torch.float64)  # float ratio, then double arithmetic
    sy = col(new_h.astype(f32) / f32(neth), torch.float64)
    x = (boxes[..., 0].double() - col((netw - new_w) / 2.0 / netw, torch.float64)) / sx
    y = (boxes[..., 1].double() - col((neth - new_h) / 2.0 / neth, torch.float64)) / sy
    bw = boxes[..., 2] * col(f32(netw) / new_w.astype(f32), torch.float32)  # float arithmetic
    bh = boxes[..., 3] * col(f32(neth) / new_h.astype(f32), torch.float32)
    return torch.stack((x.float(), y.float(), bw, bh), -1)


def to_pixels(boxes: Tensor, w, h) -> Tensor:
    """(N, n, 4) normalised centre-size relative to w x h images -> pixel centre-size (`relative=0`).

    w, h: ints or (N,) arrays; float multiplication, as darknet's `b.x *= w`.
    """
    wh = np.stack(np.broadcast_arrays(w, h, w, h), -1).reshape(-1, 1, 4)
    return boxes * torch.as_tensor(wh, dtype=boxes.dtype, device=boxes.device)


# --------------------------------------------------------------------------- NMS


def nms_partition(nonzero: np.ndarray) -> np.ndarray:
    """Darknet's swap loop that moves objectness == 0 slots to the end, as a permutation (n,).

    `for i <= k: if obj[i] == 0: swap(i, k--), --i`: front holes get the nonzero slots pulled from
    the back (last first); the zeros land at the back in the order the loop meets them.
    """
    nz = np.asarray(nonzero, dtype=bool)
    total, m = len(nz), int(nz.sum())
    out = np.arange(total)
    holes = np.nonzero(~nz[:m])[0]  # front zeros, in the order i meets them
    pulled = np.arange(total - 1, m - 1, -1)  # back slots, in the order k pulls them
    pulled_nz = nz[pulled]
    out[holes] = pulled[pulled_nz]
    # each hole goes to the back, followed by the zeros pulled while refilling it (group = hole number);
    # zeros pulled after the last hole is filled (group = #holes) are met by i itself: slot m first
    zero_at = np.nonzero(~pulled_nz)[0]
    zeros = pulled[zero_at]
    group = np.concatenate([np.arange(len(holes)), (np.cumsum(pulled_nz) - pulled_nz)[zero_at]])
    sub = np.concatenate([np.zeros(len(holes)), (zeros != m)])
    rank = np.concatenate([np.zeros(len(holes)), zero_at])
    placed = np.concatenate([holes, zeros])[np.lexsort((rank, sub, group))]  # to slots total-1, total-2..
    out[m:] = placed[::-1]
    return out


def _union(orders: Tensor, valid: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Slots taking part in any order, packed first: (N, U) slot indices and (N, n) slot -> packed index."""
    hits = torch.zeros(orders.shape[0], n, dtype=torch.int32, device=orders.device)
    hits.scatter_add_(1, orders.flatten(1), valid.flatten(1).int())  # (N, n) orders using each slot
    u = int((hits > 0).sum(1).max())
    packed = torch.sort((hits > 0).int(), dim=1, descending=True, stable=True).indices[:, :u]  # (N, U)
    lut = torch.zeros_like(hits, dtype=torch.long)
    lut.scatter_(1, packed, torch.arange(u, device=orders.device).expand_as(packed))
    return packed, lut


def _packed_overlaps(boxes: Tensor, nms: float, max_elements: int = 1 << 22) -> Tensor:
    """IoU > nms among each image's boxes (N, U, 4), as bitsets: (N, U, W) int64, bit j of row i.

    Images go in chunks of at most `max_elements` IoU entries.
    """
    n_img, u, _ = boxes.shape
    words = max(1, -(-u // 64))
    weights = torch.ones(64, dtype=torch.long, device=boxes.device) << torch.arange(64, device=boxes.device)
    t = _f32(nms).to(boxes.device)
    step = max(1, max_elements // max(1, u * u))
    out = []
    for c in range(0, n_img, step):
        b = boxes[c:c + step]
        over = torch.nn.functional.pad(box_iou_matrix(b, b) > t, (0, words * 64 - u))  # (n, U, W*64)
        # distinct powers of two add up to their OR, the sign bit (2**63 wraps to -2**63) included
        out.append((over.view(len(b), u, words, 64).long() * weights).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, u, words, dtype=torch.long, device=boxes.device)


def greedy_nms(boxes: Tensor, orders: Tensor, count: Tensor, nms: float,
               explain: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Greedy NMS of G processing orders per image, vectorised over images, orders and boxes.

    boxes (N, n, 4) centre-size, any unit; orders (N, G, n) slot orders (one per class, or one by
    objectness) whose first count (N, G) slots take part. Returns (N, G, K) bool, K = max count: does
    the slot at each position survive. A slot survives iff no surviving slot before it in its order
    has IoU > nms with it (an IoU exactly at nms does not suppress). The IoUs among the slots taking
    part are computed once per image, kept as bitsets; then one step per position, as darknet's
    `for i` loop, for every image and order at once (its `for j` loop is one OR of a bitset row).

    explain: also return `by` (N, G, K) int64, the slot that suppressed the slot at each position
    (-1 where it survived or does not take part): the first surviving slot before it in its order
    with IoU > nms, the `i` whose `for j` loop zeroed it in darknet. The same loop records it as it
    ORs each survivor's row, so the survivors are the same with and without it.
    """
    n_img, g, n = orders.shape
    k = int(count.max()) if count.numel() else 0
    valid = torch.arange(k, device=orders.device) < count.unsqueeze(-1)  # (N, G, K)
    packed, lut = _union(orders[..., :k], valid, n)
    over = _packed_overlaps(boxes.gather(1, packed.unsqueeze(-1).expand(-1, -1, 4)), nms)  # (N, U, W)
    pos = lut.gather(1, orders[..., :k].flatten(1)).view(n_img, g, k)  # order positions -> packed index
    image = torch.arange(n_img, device=orders.device).view(-1, 1).expand(n_img, g)
    suppressed = torch.zeros(n_img, g, over.shape[-1], dtype=torch.long, device=orders.device)
    kept = torch.zeros_like(valid)
    u = packed.shape[1]
    if explain:  # (N, G, U) packed index of the survivor that first set each bit of `suppressed`
        by_packed = torch.full((n_img, g, u), -1, dtype=torch.long, device=orders.device)
        bit = torch.arange(64, device=orders.device)
    for t in range(k):
        i = pos[:, :, t]  # (N, G) the box each order reaches at this step
        hit = (suppressed.gather(2, (i // 64).unsqueeze(-1)).squeeze(-1) >> (i % 64)) & 1
        kept[:, :, t] = valid[:, :, t] & (hit == 0)
        row = over[image, i] * kept[:, :, t].unsqueeze(-1)  # (N, G, W) a kept box suppresses its row
        suppressed |= row
        if explain:
            bits = ((row.unsqueeze(-1) >> bit) & 1).flatten(2)[..., :u] == 1  # (N, G, U)
            by_packed = torch.where(bits & (by_packed < 0), i.unsqueeze(-1), by_packed)
    if not explain:
        return kept
    by = by_packed.gather(2, pos)  # (N, G, K) packed index, or -1
    by = packed.gather(1, by.clamp(min=0).flatten(1)).view(n_img, g, k)  # -> slot
    return kept, torch.where(valid & ~kept, by, torch.full_like(by, -1))


def class_orders(prob: Tensor, perm: Tensor) -> Tensor:
    """do_nms_sort's sorts: per class k, a stable sort by prob[k] descending of the previous order.

    prob (N, n, C), perm (N, n) the partition -> (N, C, n) the order while class k is processed; the
    last is the order darknet leaves the array in. Slots with prob[k] > 0 lead order k.
    """
    order, orders = perm, []
    for k in range(prob.shape[-1]):
        key = prob[..., k].gather(1, order)
        order = order.gather(1, torch.sort(key, dim=1, descending=True, stable=True).indices)
        orders.append(order)
    return torch.stack(orders, 1)


def _partition(obj: Tensor) -> Tensor:
    perms = [nms_partition(o) for o in (obj != 0).cpu().numpy()]
    return torch.as_tensor(np.stack(perms), device=obj.device).reshape(obj.shape)


def do_nms_sort(boxes: Tensor, obj: Tensor, prob: Tensor, nms: float,
                explain: bool = False) -> tuple[Tensor, ...]:
    """Darknet's per-class NMS: (N, n, 4), (N, n), (N, n, C) -> (probabilities after NMS, final order).

    For each class, a box with IoU > nms with a higher-ranked surviving box of that class loses that
    class's probability only; its box, objectness and other classes stay. Boxes: any one unit.
    explain: also return `by` (N, n, C) int64, the slot whose box took each probability (-1 where
    none did): `greedy_nms`'s record of the same run.
    """
    orders = class_orders(prob, _partition(obj))  # (N, C, n)
    count = (prob > 0).sum(1)  # (N, C): the slots with a probability lead each class's order
    result = greedy_nms(boxes, orders, count, nms, explain=explain)  # (N, C, K)
    kept = result[0] if explain else result
    n, c, k = kept.shape
    gone = torch.zeros_like(prob, dtype=torch.bool)
    image = torch.arange(n, device=prob.device).view(n, 1, 1).expand(n, c, k)
    cls = torch.arange(c, device=prob.device).view(1, c, 1).expand(n, c, k)
    gone[image, orders[..., :k], cls] = ~kept  # where the prob is 0 already, zeroing changes nothing
    post = torch.where(gone, torch.zeros_like(prob), prob)
    if not explain:
        return post, orders[:, -1]
    by = torch.full(prob.shape, -1, dtype=torch.long, device=prob.device)
    by[image, orders[..., :k], cls] = result[1]  # a class's order holds each slot once
    return post, orders[:, -1], by


def do_nms_obj(boxes: Tensor, obj: Tensor, prob: Tensor, nms: float,
               explain: bool = False) -> tuple[Tensor, ...]:
    """Darknet's class-agnostic NMS on objectness -> (objectness, probabilities, final order).

    A suppressed box loses its objectness and all its class probabilities. explain: also return
    `by` (N, n) int64, the slot whose box suppressed each slot (-1 where none did).
    """
    perm = _partition(obj)
    order = perm.gather(1, torch.sort(obj.gather(1, perm), dim=1, descending=True, stable=True).indices)
    result = greedy_nms(boxes, order.unsqueeze(1), (obj != 0).sum(1, keepdim=True), nms, explain=explain)
    kept = (result[0] if explain else result)[:, 0]  # (N, K)
    gone = torch.zeros_like(obj, dtype=torch.bool).scatter_(1, order[:, :kept.shape[1]], ~kept)
    gone &= obj != 0
    out = (torch.where(gone, torch.zeros_like(obj), obj),
           torch.where(gone.unsqueeze(-1), torch.zeros_like(prob), prob), order)
    if not explain:
        return out
    by = torch.full(obj.shape, -1, dtype=torch.long, device=obj.device)
    by.scatter_(1, order[:, :kept.shape[1]], result[1][:, 0])
    return (*out, by)


# --------------------------------------------------------------------------- output lines


def comp4_corners(boxes_px: np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixel centre-size (K, 4) -> VOC 1-based corners (K, 4) `xmin ymin xmax ymax`, float32.

    `print_detector_detections`: x - w/2. + 1 in double, stored to float; xmin, ymin clipped to 1,
    xmax to the image width, ymax to its height; nothing else is clipped.
    """
    b = np.asarray(boxes_px, dtype=np.float32).astype(np.float64)
    x, y, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    c = np.stack([x - bw / 2.0 + 1, y - bh / 2.0 + 1, x + bw / 2.0 + 1, y + bh / 2.0 + 1], 1)
    c = c.astype(np.float32)
    c[:, :2] = np.maximum(c[:, :2], np.float32(1))
    c[:, 2] = np.minimum(c[:, 2], np.float32(w))
    c[:, 3] = np.minimum(c[:, 3], np.float32(h))
    return c


def comp4_lines(image_id: str, boxes_px: np.ndarray, prob: np.ndarray, w: int, h: int,
                class_names: Sequence[str]) -> dict[str, list[str]]:
    """Darknet's result lines `"%s %f %f %f %f %f"` per class, for detections in darknet's order.

    boxes_px (K, 4) pixel centre-size, prob (K, C) after NMS; a line per nonzero probability.
    """
    corners = comp4_corners(boxes_px, w, h).tolist()
    prob = np.asarray(prob, dtype=np.float32)
    out: dict[str, list[str]] = {c: [] for c in class_names}
    for i, j in zip(*np.nonzero(prob), strict=True):
        x1, y1, x2, y2 = corners[i]  # C's %f of a float: the float's exact value, 6 decimals
        out[class_names[j]].append(f"{image_id} {float(prob[i, j]):f} {x1:f} {y1:f} {x2:f} {y2:f}")
    return out


def draw_lines(prob: np.ndarray, thresh: float, class_names: Sequence[str]) -> list[str]:
    """`draw_detections`' printout `"%s: %.0f%%"` for every prob > thresh, detections in order."""
    prob = np.asarray(prob, dtype=np.float32)
    pct = prob * np.float32(100)  # float arithmetic, as darknet's prob*100
    return [f"{class_names[j]}: {float(pct[i, j]):.0f}%"
            for i, j in zip(*np.nonzero(prob > np.float32(thresh)), strict=True)]


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class Suppression:
    """One NMS decision: the box of slot `slot` lost the probabilities of `classes` (their values
    before NMS: `probs`) to the box of slot `by`, their IoU `iou` being > nms.

    `do_nms_sort` (per class): one class per decision, so a slot can lose one class and keep another.
    `do_nms_obj`: every class the slot had, with its objectness. `iou` is the IoU NMS compared (on
    the boxes it ran on: relative or pixel); `box` and `by_box` are pixel corners `(x1, y1, x2, y2)`
    of the original image, as `Detections.xyxy`.
    """

    slot: int
    classes: tuple[int, ...]
    probs: tuple[float, ...]
    by: int
    iou: float
    box: tuple[float, float, float, float]
    by_box: tuple[float, float, float, float]


@dataclass
class Detections:
    """One image's detections after NMS, in darknet's final order: K boxes with a nonzero probability.

    boxes (K, 4) pixel centre-size `(x, y, w, h)` in the original image (float32); objectness (K,);
    probs (K, C) after NMS (0 where below thresh or suppressed); index (K,) the slot
    `a*H*W + row*W + col` each came from; width, height: the image size in pixels; names: the C class
    names when the detector knows them (`Detector.load` sets them), for `labels()` and `draw()`;
    suppressed: what NMS removed and why (`Suppression`s), when asked for
    (`detections_from_output(..., explain=True)`, `Detector.explain`).
    """

    boxes: np.ndarray
    objectness: np.ndarray
    probs: np.ndarray
    index: np.ndarray
    width: int
    height: int
    names: Sequence[str] | None = field(default=None, repr=False, compare=False)
    suppressed: list[Suppression] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def xyxy(self) -> np.ndarray:
        """(K, 4) pixel corners `(x1, y1, x2, y2)`, continuous 0-based, not clipped."""
        x, y, w, h = self.boxes.T
        return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1)

    def items(self) -> list[tuple[int, float, tuple[float, float, float, float]]]:
        """`(class, prob, (x1, y1, x2, y2))` per nonzero probability, pixel corners, darknet's order."""
        corners = self.xyxy.tolist()
        return [(int(j), float(self.probs[i, j]), tuple(corners[i]))
                for i, j in zip(*np.nonzero(self.probs), strict=True)]

    def _names(self, class_names: Sequence[str] | None) -> Sequence[str]:
        names = class_names if class_names is not None else self.names
        if names is None:
            raise ValueError("these Detections carry no class names: pass class_names, or detect with "
                             "Detector.load(cfg, weights, names=...)")
        if len(names) != self.probs.shape[1]:
            raise ValueError(f"{len(names)} class names for detections of {self.probs.shape[1]} classes")
        return names

    def labels(self, class_names: Sequence[str] | None = None) -> list[tuple[str, float, tuple[float, ...]]]:
        """`(name, probability, (x1, y1, x2, y2))` per nonzero probability, in darknet's order.

        Pixel corners of the original image, continuous 0-based, not clipped; `items()` with names.
        """
        names = self._names(class_names)
        return [(names[c], p, box) for c, p, box in self.items()]

    def draw(self, image: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
        """The (H, W, 3) RGB image (uint8, or float in [0, 1]) -> a uint8 RGB copy with the labelled
        boxes drawn as `python -m yolov2 detect` draws them (darknet's colours)."""
        from yolov2.detect.draw import draw_boxes

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]}, but these detections are of "
                             f"a {self.width}x{self.height} image")
        return np.ascontiguousarray(draw_boxes(image, self, self._names(class_names))[:, :, ::-1])

    def per_box(self) -> list[tuple[tuple[float, float, float, float], list[tuple[int, float]]]]:
        """One entry per detection: its pixel corners and its `(class, prob)` pairs, class order."""
        corners = self.xyxy.tolist()
        return [(tuple(corners[i]), [(int(j), float(p[j])) for j in np.nonzero(p)[0]])
                for i, p in enumerate(self.probs)]

    def comp4_corners(self) -> np.ndarray:
        """(K, 4) VOC 1-based pixel corners clipped as `print_detector_detections` does."""
        return comp4_corners(self.boxes, self.width, self.height)

    def comp4_lines(self, image_id: str, class_names: Sequence[str]) -> dict[str, list[str]]:
        """Darknet's `valid` result lines for this image, per class."""
        return comp4_lines(image_id, self.boxes, self.probs, self.width, self.height, class_names)

    def draw_lines(self, thresh: float, class_names: Sequence[str]) -> list[str]:
        """Darknet's `"%s: %.0f%%"` printout of `test_detector`."""
        return draw_lines(self.probs, thresh, class_names)

    def to_json(self, class_names: Sequence[str]) -> list[dict]:
        """One dict per (box, class): class id and name, prob, pixel corners `[x1, y1, x2, y2]`."""
        return [{"class": c, "name": class_names[c], "prob": p, "box": list(b)} for c, p, b in self.items()]


def detections_from_output(output: Tensor, anchors: Tensor, sizes: np.ndarray, netw: int, neth: int,
                           thresh: float, nms: float = 0.45, *, letterbox: bool = True,
                           relative: bool = True, nms_kind: str = "sort",
                           explain: bool = False) -> list[Detections]:
    """Activated output (N, A*(5+C), H, W) of N images of sizes (N, 2) `(w, h)` -> their detections.

    darknet's get_network_boxes + do_nms_sort (`nms_kind="obj"`: do_nms_obj), vectorised over the
    batch. letterbox: the inputs were letterboxed (undo it), else plainly resized. relative: NMS on
    boxes relative to the image (test_detector) or in pixels (validate_detector's `relative=0`).
    explain: also fill each `Detections.suppressed` with the boxes NMS removed, the box that removed
    each and their IoU (the same NMS run, which records who suppressed whom).
    """
    w, h = sizes[:, 0], sizes[:, 1]
    boxes = region_boxes(output, anchors)  # (N, n, 4) relative to the network input
    if letterbox:  # else the resize stretched the image: relative to the input is relative to the image
        boxes = correct_region_boxes(boxes, w, h, netw, neth)
    pixels = to_pixels(boxes, w, h)
    obj, prob = region_scores(output, anchors.shape[0], thresh)
    nms_boxes = boxes if relative else pixels  # test_detector: relative; validate_detector: pixels
    before = prob
    if nms_kind == "obj":
        obj, prob, order, *by = do_nms_obj(nms_boxes, obj, prob, nms, explain=explain)
    else:
        prob, order, *by = do_nms_sort(nms_boxes, obj, prob, nms, explain=explain)
    out = []
    for b, (pix, o, p, idx_order) in enumerate(zip(*(t.cpu().numpy() for t in (pixels, obj, prob, order)),
                                                   strict=True)):
        idx = idx_order[(p[idx_order] != 0).any(-1)]  # darknet's order, boxes with a class left
        out.append(Detections(pix[idx], o[idx], p[idx], idx, int(w[b]), int(h[b])))
        if explain:
            out[-1].suppressed = _suppressions(nms_boxes[b], pixels[b], before[b], by[0][b], nms_kind)
    return out


def _corners(box: np.ndarray) -> tuple[float, float, float, float]:
    x, y, w, h = box  # float32, the arithmetic of Detections.xyxy
    return (float(x - w / 2), float(y - h / 2), float(x + w / 2), float(y + h / 2))


def _suppressions(nms_boxes: Tensor, pixels: Tensor, prob: Tensor, by: Tensor,
                  kind: str) -> list[Suppression]:
    """One image's NMS record -> `Suppression`s. prob (n, C) before NMS; by (n, C) (sort) or (n,)
    (obj) the suppressing slot or -1. IoUs with `box_iou` on the boxes NMS compared. Sort: class by
    class, then by slot; obj: by slot."""
    prob, by = prob.cpu(), by.cpu()
    if kind == "obj":  # a slot loses every class it had; a slot without one was drawn by nobody
        pairs = [(int(s), tuple(int(c) for c in torch.nonzero(prob[s] > 0).flatten()), int(by[s]))
                 for s in torch.nonzero(by >= 0).flatten().tolist()]
        pairs = [(s, cls, b) for s, cls, b in pairs if cls]
    else:  # class by class, as darknet processes them
        pairs = [(int(s), (int(c),), int(by[s, c])) for c, s in torch.nonzero((by >= 0).T).tolist()]
    if not pairs:
        return []
    slots = torch.tensor([s for s, _, _ in pairs])
    bys = torch.tensor([b for _, _, b in pairs])
    ious = box_iou(nms_boxes.cpu()[slots], nms_boxes.cpu()[bys]).tolist()
    pix = pixels.cpu().numpy()
    return [Suppression(s, cls, tuple(float(prob[s, c]) for c in cls), b, iou, _corners(pix[s]),
                        _corners(pix[b]))
            for (s, cls, b), iou in zip(pairs, ious, strict=True)]


def results_from_detections(dets: Mapping[str, Detections],
                            class_names: Sequence[str]) -> dict[str, ClassDetections]:
    """What `valid` writes, in memory: image id -> Detections to class -> ClassDetections.

    Boxes are VOC 1-based clipped corners (`comp4_corners`), rows in file order (image, then
    darknet's detection order), so `yolov2.detect.evaluate` sees the same detections as from the files.
    """
    rows: dict[str, list] = {c: [] for c in class_names}
    for image_id, d in dets.items():
        corners = d.comp4_corners().tolist()
        for i, j in zip(*np.nonzero(d.probs), strict=True):
            rows[class_names[j]].append((image_id, float(d.probs[i, j]), *corners[i]))
    return {c: ClassDetections.from_rows(r) for c, r in rows.items()}
