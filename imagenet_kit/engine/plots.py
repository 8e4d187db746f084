"""PNG figures of a run: LR range test, LR/momentum schedule, training curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_lr_find(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result["lrs"], result["losses"], color="tab:blue", label="smoothed loss")
    markers = {"turn_x3": ("*", "tab:red"), "turn": ("x", "tab:red"), "valley": ("o", "tab:green"),
               "steep": ("^", "tab:orange"), "min10": ("s", "tab:purple")}
    for name, lr in result["suggestions"].items():
        marker, color = markers[name]
        loss = result["losses"][min(range(len(result["lrs"])), key=lambda i: abs(result["lrs"][i] - lr))]
        chosen = " (chosen)" if name == result["chosen"] else ""
        ax.plot([lr], [loss], marker=marker, color=color, markersize=9, linestyle="none",
                label=f"{name}: {lr:.2e}{chosen}")
    ax.axvline(result["lr"], color="tab:red", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (EMA-smoothed)")
    scaled = ""
    if result.get("global_batch", 0) != result.get("test_batch", 0):
        scaled = f", {result['peak_lr']:.3g} at global batch {result['global_batch']}"
    ax.set_title(f"LR range test: chosen {result['chosen']} = {result['lr']:.3g}{scaled}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schedule(trace: dict, path: Path, title: str) -> None:
    steps = range(len(trace["lr"]))
    epochs = [s / trace["steps_per_epoch"] for s in steps]
    fig, (ax_lr, ax_mom) = plt.subplots(1, 2, figsize=(10, 4))
    ax_lr.plot(epochs, trace["lr"], color="tab:blue")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(f"learning rate (peak {max(trace['lr']):.3g})")
    ax_mom.plot(epochs, trace["momentum"], color="tab:orange")
    ax_mom.set_xlabel("epoch")
    ax_mom.set_ylabel("momentum")
    ax_mom.set_title("momentum")
    for ax in (ax_lr, ax_mom):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(metrics: list[dict], path: Path, run_name: str) -> None:
    """Loss and accuracy per epoch, titled with the run; the epoch best.pt holds (what export and the demo use,
    the best top-1 so far) is marked on both panels."""
    epochs = [m["epoch"] + 1 for m in metrics]
    best = max(metrics, key=lambda m: m["top1"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], marker="o", label="train")
    ax_loss.plot(epochs, [m["val_loss"] for m in metrics], marker="o", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * m["top1"] for m in metrics], marker="o", label="top-1")
    ax_acc.plot(epochs, [100 * m["top5"] for m in metrics], marker="o", label="top-5")
    ax_acc.plot([best["epoch"] + 1], [100 * best["top1"]], marker="*", color="tab:red", markersize=14,
                linestyle="none", label=f"exported (best.pt): epoch {best['epoch'] + 1}, {100 * best['top1']:.1f}%")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("val accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.axvline(best["epoch"] + 1, color="tab:red", linestyle="--", linewidth=1)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"run {run_name}: {len(metrics)} epoch{'s' if len(metrics) != 1 else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
