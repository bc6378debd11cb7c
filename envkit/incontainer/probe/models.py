"""Models for the benchmark, written with torch alone so every image can run them.

- ``ResNet50``: the torchvision ResNet-50 v1.5 layout (stride on the 3x3 conv), used when
  torchvision is not importable; same layers, so the same FLOPs.
- ``YoloV8s``: the YOLOv8s layout (width 0.50, depth 0.33): Conv-BN-SiLU, C2f blocks, SPPF,
  a PAN neck and the decoupled, anchor-free head with DFL box bins.
- ``DetectionLoss``: a task-aligned assignment (top-k anchors per box by cls^alpha * IoU^beta,
  inside the box, conflicts resolved by IoU) with BCE classification, CIoU box and DFL losses,
  weighted as YOLOv8 weights them. A simplified but complete detection loss, so the training step
  does the work a real one does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- ResNet50


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * _Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * _Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * _Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * _Bottleneck.expansion),
            )
        layers = [_Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * _Bottleneck.expansion
        layers += [_Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(prefer_torchvision: bool = True) -> tuple[nn.Module, str]:
    """torchvision's ResNet-50 when importable (what users train), else the built-in copy."""
    if prefer_torchvision:
        try:
            from torchvision.models import resnet50 as tv_resnet50  # noqa: PLC0415 - optional

            return tv_resnet50(weights=None), "torchvision"
        except Exception:  # noqa: BLE001 - absent or broken torchvision: fall back
            pass
    return ResNet50(), "builtin"


# --------------------------------------------------------------------------- YOLOv8s


class Conv(nn.Module):
    """Conv2d without bias, BatchNorm, SiLU: YOLOv8's basic block."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c1, c2, 3)
        self.cv2 = Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions; every bottleneck's output joins the final concat."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(hidden * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled head: a box branch (4 x reg_max DFL bins) and a class branch per level."""

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...], reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        c2 = max(16, channels[0] // 4, reg_max * 4)
        c3 = max(channels[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in channels
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in channels
        )
        # YOLOv8's bias start: boxes at 1.0, classes at a low prior (about 5 objects per 640 image),
        # so the first steps do not drown in confident false positives.
        for box, cls, stride in zip(self.cv2, self.cv3, strides, strict=True):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, math.log(5 / nc / (640 / stride) ** 2))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [torch.cat((box(f), cls(f)), 1) for box, cls, f in zip(self.cv2, self.cv3, feats, strict=True)]


class YoloV8s(nn.Module):
    """YOLOv8s (width 0.50, depth 0.33, 80 classes by default): returns raw per-level maps."""

    strides = (8, 16, 32)

    def __init__(self, nc: int = 80):
        super().__init__()
        self.nc = nc
        self.b0 = Conv(3, 32, 3, 2)
        self.b1 = Conv(32, 64, 3, 2)
        self.b2 = C2f(64, 64, 1, shortcut=True)
        self.b3 = Conv(64, 128, 3, 2)
        self.b4 = C2f(128, 128, 2, shortcut=True)  # P3/8
        self.b5 = Conv(128, 256, 3, 2)
        self.b6 = C2f(256, 256, 2, shortcut=True)  # P4/16
        self.b7 = Conv(256, 512, 3, 2)
        self.b8 = C2f(512, 512, 1, shortcut=True)
        self.b9 = SPPF(512, 512, 5)  # P5/32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(512 + 256, 256, 1)
        self.h15 = C2f(256 + 128, 128, 1)  # P3 out
        self.h16 = Conv(128, 128, 3, 2)
        self.h18 = C2f(128 + 256, 256, 1)  # P4 out
        self.h19 = Conv(256, 256, 3, 2)
        self.h21 = C2f(256 + 512, 512, 1)  # P5 out
        self.detect = Detect(nc, (128, 256, 512), self.strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat((self.up(p5), p4), 1))
        out3 = self.h15(torch.cat((self.up(h12), p3), 1))
        out4 = self.h18(torch.cat((self.h16(out3), h12), 1))
        out5 = self.h21(torch.cat((self.h19(out4), p5), 1))
        return self.detect([out3, out4, out5])


# --------------------------------------------------------------------------- detection loss


def make_anchors(feats: list[Tensor], strides: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Anchor centres in grid units (A, 2) and each anchor's stride (A, 1)."""
    points, stride_list = [], []
    for feat, stride in zip(feats, strides, strict=True):
        h, w = feat.shape[2:]
        sy = torch.arange(h, device=feat.device, dtype=torch.float32) + 0.5
        sx = torch.arange(w, device=feat.device, dtype=torch.float32) + 0.5
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(stride), device=feat.device))
    return torch.cat(points), torch.cat(stride_list)


def box_iou(b1: Tensor, b2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of broadcastable xyxy boxes."""
    inter_w = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(min=0)
    inter_h = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return inter / (area1 + area2 - inter + eps)


def box_ciou(b1: Tensor, b2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (IoU minus centre-distance and aspect-ratio penalties) of matching xyxy boxes."""
    w1, h1 = b1[..., 2] - b1[..., 0], (b1[..., 3] - b1[..., 1]).clamp(min=eps)
    w2, h2 = b2[..., 2] - b2[..., 0], (b2[..., 3] - b2[..., 1]).clamp(min=eps)
    iou = box_iou(b1, b2, eps)
    cw = torch.maximum(b1[..., 2], b2[..., 2]) - torch.minimum(b1[..., 0], b2[..., 0])
    ch = torch.maximum(b1[..., 3], b2[..., 3]) - torch.minimum(b1[..., 1], b2[..., 1])
    diag2 = cw**2 + ch**2 + eps
    rho2 = (
        (b2[..., 0] + b2[..., 2] - b1[..., 0] - b1[..., 2]) ** 2
        + (b2[..., 1] + b2[..., 3] - b1[..., 1] - b1[..., 3]) ** 2
    ) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / diag2 + v * alpha)


class DetectionLoss:
    def __init__(
        self,
        nc: int = 80,
        strides: tuple[int, ...] = (8, 16, 32),
        reg_max: int = 16,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        weights: tuple[float, float, float] = (7.5, 0.5, 1.5),  # box, cls, dfl as in YOLOv8
    ):
        self.nc, self.strides, self.reg_max = nc, strides, reg_max
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.box_w, self.cls_w, self.dfl_w = weights

    @torch.no_grad()
    def assign(
        self, scores: Tensor, pboxes: Tensor, anchors: Tensor, labels: Tensor, gboxes: Tensor, gmask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Task-aligned assignment. scores (B,A,C) probabilities, pboxes (B,A,4) and gboxes (B,M,4)
        xyxy in pixels, anchors (A,2) in pixels, labels (B,M), gmask (B,M).
        Returns target boxes (B,A,4), target scores (B,A,C) and the foreground mask (B,A)."""
        batch, n_anchors, _ = scores.shape
        n_gt = labels.shape[1]
        lt = anchors[None, None] - gboxes[..., None, :2]
        rb = gboxes[..., None, 2:] - anchors[None, None]
        valid = (torch.cat((lt, rb), -1).amin(-1) > 1e-9) & gmask[..., None]  # (B,M,A)
        cls_idx = labels.long().clamp(min=0)[:, None, :].expand(batch, n_anchors, n_gt)
        cls_scores = scores.gather(2, cls_idx).permute(0, 2, 1)  # (B,M,A)
        ious = box_iou(gboxes[:, :, None, :], pboxes[:, None, :, :]).clamp(min=0) * valid
        align = cls_scores.pow(self.alpha) * ious.pow(self.beta) * valid
        topk = min(self.topk, n_anchors)
        top_idx = align.topk(topk, dim=-1).indices
        pos = torch.zeros_like(valid).scatter_(-1, top_idx, True) & valid
        # An anchor picked by several boxes keeps the box it overlaps most.
        multi = pos.sum(1, keepdim=True) > 1
        best = torch.zeros_like(pos).scatter_(1, (ious * pos).argmax(1, keepdim=True), True)
        pos = torch.where(multi, best & pos, pos)
        fg = pos.any(1)  # (B,A)
        gt_idx = pos.to(torch.uint8).argmax(1)  # (B,A)
        target_labels = labels.long().gather(1, gt_idx)
        target_boxes = gboxes.gather(1, gt_idx[..., None].expand(batch, n_anchors, 4))
        align = align * pos
        norm = align * (ious * pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + 1e-9)
        target_scores = F.one_hot(target_labels.clamp(min=0), self.nc).to(scores.dtype)
        target_scores = target_scores * (norm.amax(1) * fg)[..., None]
        return target_boxes, target_scores, fg

    def __call__(self, feats: list[Tensor], gboxes: Tensor, labels: Tensor, gmask: Tensor) -> Tensor:
        batch = feats[0].shape[0]
        pred = torch.cat([f.flatten(2) for f in feats], 2).float()  # (B, no, A)
        pred_dist, pred_logits = pred.split((4 * self.reg_max, self.nc), 1)
        pred_dist = pred_dist.permute(0, 2, 1).contiguous()  # (B,A,4*reg_max)
        pred_logits = pred_logits.permute(0, 2, 1).contiguous()  # (B,A,C)
        anchors, stride = make_anchors(feats, self.strides)
        bins = torch.arange(self.reg_max, device=pred.device, dtype=torch.float32)
        dist = pred_dist.view(batch, -1, 4, self.reg_max).softmax(-1) @ bins  # (B,A,4) grid units
        pboxes = torch.cat((anchors - dist[..., :2], anchors + dist[..., 2:]), -1)
        target_boxes, target_scores, fg = self.assign(
            pred_logits.detach().sigmoid(), pboxes.detach() * stride, anchors * stride, labels, gboxes, gmask
        )
        score_sum = target_scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="sum") / score_sum
        weight = target_scores.sum(-1)[fg]
        tboxes = (target_boxes / stride)[fg]  # grid units
        loss_box = ((1.0 - box_ciou(pboxes[fg], tboxes)) * weight).sum() / score_sum
        anchors_fg = anchors.expand(batch, -1, -1)[fg]
        ltrb = torch.cat((anchors_fg - tboxes[:, :2], tboxes[:, 2:] - anchors_fg), -1)
        ltrb = ltrb.clamp(0, self.reg_max - 1 - 0.01)
        left = ltrb.long()
        right_w = ltrb - left
        logits = pred_dist[fg].view(-1, self.reg_max)
        ce_left = F.cross_entropy(logits, left.view(-1), reduction="none").view(left.shape)
        ce_right = F.cross_entropy(logits, (left + 1).view(-1), reduction="none").view(left.shape)
        dfl = (ce_left * (1 - right_w) + ce_right * right_w).mean(-1)
        loss_dfl = (dfl * weight).sum() / score_sum
        return self.box_w * loss_box + self.cls_w * loss_cls + self.dfl_w * loss_dfl


def synthetic_detection_batch(
    batch: int, size: int, device: torch.device | str, boxes_per_image: int = 8, nc: int = 80
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images, xyxy pixel boxes (B,M,4), labels (B,M) and a validity mask, made on ``device``
    from the global seed."""
    images = torch.randn(batch, 3, size, size, device=device)
    centre = torch.rand(batch, boxes_per_image, 2, device=device) * 0.8 + 0.1
    half = (torch.rand(batch, boxes_per_image, 2, device=device) * 0.35 + 0.05) / 2
    boxes = (torch.cat((centre - half, centre + half), -1).clamp(0, 1)) * size
    labels = torch.randint(0, nc, (batch, boxes_per_image), device=device)
    mask = torch.ones(batch, boxes_per_image, dtype=torch.bool, device=device)
    return images, boxes, labels, mask
