"""Finding the host's TPU chips on the PCI bus, the way libtpu and torch_xla count them.

A chip is a PCI function of Google's vendor id whose device id is a TPU's: the vendor id alone
also matches the gVNIC network card of every GCE VM. The order (by PCI address) is the order in
which the runtime numbers chips, so chip i is what `TPU_VISIBLE_CHIPS=i` selects.
"""

from __future__ import annotations

from pathlib import Path

GOOGLE_PCI_VENDOR = 0x1AE0
# v2/v3, v4, v5p, v5e (v5litepod), v6e (Trillium).
TPU_PCI_DEVICES = frozenset({0x0027, 0x005E, 0x0062, 0x0063, 0x006F})


def _hex_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def tpu_chips(sysfs: Path = Path("/sys")) -> list[str]:
    """The PCI addresses of the TPU chips under `sysfs`, in the runtime's order."""
    devices = sysfs / "bus" / "pci" / "devices"
    if not devices.is_dir():
        return []
    return sorted(
        device.name
        for device in devices.iterdir()
        if _hex_file(device / "vendor") == GOOGLE_PCI_VENDOR
        and _hex_file(device / "device") in TPU_PCI_DEVICES
    )


if __name__ == "__main__":
    # Standard library only, so a script can count chips before any venv exists.
    print(len(tpu_chips()))
