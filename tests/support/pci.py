"""A fake sysfs PCI bus, for what a host's TPU chips decide (how many replicas, which chip each)."""

from __future__ import annotations

from pathlib import Path


def pci_tree(root: Path, devices: dict[str, tuple[str, str]]) -> Path:
    """A sysfs root whose PCI bus holds `devices` (address -> (vendor, device))."""
    for address, (vendor, device) in devices.items():
        folder = root / "bus" / "pci" / "devices" / address
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(vendor + "\n")
        (folder / "device").write_text(device + "\n")
    return root


def tpu_host(root: Path, chips: int, device: str = "0x0063") -> Path:
    """A sysfs root with `chips` TPU chips of PCI device id `device`, beside two functions that
    are not TPUs."""
    devices = {f"0000:00:{4 + i:02x}.0": ("0x1ae0", device) for i in range(chips)}
    devices["0000:00:03.0"] = ("0x1ae0", "0x0042")  # gVNIC: Google's vendor id, not a TPU
    devices["0000:00:01.0"] = ("0x8086", "0x7110")
    return pci_tree(root, devices)
