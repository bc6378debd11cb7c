"""Train a torchvision ResNet on an ImageFolder dataset, on one or many GPUs (or CPUs) with torchrun.

    torchrun --nproc_per_node=NUM_GPUS examples/train_resnet.py --data /data/tiny \
        --logdir /workspace/runs/resnet --checkpoint-dir /workspace/checkpoints

DistributedDataParallel over NCCL on GPUs, gloo on CPUs. On GPUs: AMP (bf16 where supported),
channels_last, cudnn.benchmark, pinned memory. Rank 0 writes TensorBoard scalars (loss, accuracy,
images/s) and a checkpoint after every epoch; --resume continues from it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Root with train/ and val/ class folders.")
    parser.add_argument("--arch", default="resnet50", help="A torchvision ResNet: resnet18, resnet50, ...")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="Per process.")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers per process.")
    parser.add_argument("--logdir", type=Path, default=Path("runs/resnet"))
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--resume", action="store_true", help="Continue from checkpoint-dir/last.pt.")
    parser.add_argument("--no-amp", action="store_true", help="Train in fp32/TF32 even on a GPU.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world > 1:
        dist.init_process_group(backend=backend)
    return rank, world, device


def loaders(args: argparse.Namespace, world: int, rank: int, pin: bool) -> tuple[DataLoader, DataLoader]:
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size, scale=(0.6, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    val_tf = transforms.Compose([
        transforms.Resize(args.image_size),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        normalize,
    ])
    train_set = torchvision.datasets.ImageFolder(args.data / "train", train_tf)
    val_set = torchvision.datasets.ImageFolder(args.data / "val", val_tf)
    sampler = None
    if world > 1:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True)
    common = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": pin,
              "persistent_workers": args.workers > 0}
    train = DataLoader(train_set, sampler=sampler, shuffle=sampler is None, drop_last=True, **common)
    val = DataLoader(val_set, shuffle=False, **common)
    return train, val


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.numel()
    model.train()
    return correct / max(total, 1)


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    torch.manual_seed(args.seed)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    amp: torch.dtype | None = None
    if cuda and not args.no_amp:
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    train_loader, val_loader = loaders(args, world, rank, pin=cuda)
    classes = len(train_loader.dataset.classes)  # type: ignore[attr-defined]
    model = getattr(torchvision.models, args.arch)(num_classes=classes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if world > 1 else model
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16)
    loss_fn = nn.CrossEntropyLoss()

    start_epoch, step = 0, 0
    checkpoint = args.checkpoint_dir / "last.pt"
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(args.logdir))
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        print(f"{args.arch}: {classes} classes, {len(train_loader.dataset)} training images, "
              f"{world} process(es) on {device.type}, amp={amp}", flush=True)

    for epoch in range(start_epoch, args.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        seen, started = 0, time.perf_counter()
        for images, labels in train_loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(ddp(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += images.shape[0] * world
            step += 1
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
        scheduler.step()
        elapsed = time.perf_counter() - started
        if rank == 0 and writer is not None:
            accuracy = evaluate(model, val_loader, device, amp)
            writer.add_scalar("val/accuracy", accuracy, epoch)
            writer.add_scalar("train/images_per_second", seen / elapsed, epoch)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], epoch)
            writer.flush()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                        "arch": args.arch, "classes": train_loader.dataset.classes},  # type: ignore[attr-defined]
                       checkpoint)
            print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, val accuracy {accuracy:.3f}, "
                  f"{seen / elapsed:.1f} images/s", flush=True)
        if world > 1:
            dist.barrier()

    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
