// `--devices all` or `--devices 0,2`: which GPUs (device ordinals, as fa_set_device and CUDA_VISIBLE_DEVICES number
// them) a node-wide command covers. One parser for doctor and bench.
import { FlashAttnError } from "./errors.ts";

/** `--devices all` or a list of device ordinals ("0,2"). */
export type DeviceSelection = "all" | number[];

/** More GPUs than any node has; a larger ordinal is a typo, not a device. */
export const MAX_DEVICE_ORDINAL = 255;

/** "all" or a comma list of distinct ordinals in 0..MAX_DEVICE_ORDINAL, in the order given; else a usage error. */
export function parseDeviceSelection(text: string): DeviceSelection {
  const trimmed = text.trim();
  if (trimmed === "all") return "all";
  const items = trimmed.split(",").map((s) => s.trim());
  const devices: number[] = [];
  for (const item of items) {
    const n = Number(item);
    if (!/^\d+$/.test(item) || n > MAX_DEVICE_ORDINAL) {
      throw new FlashAttnError(
        "USAGE",
        `--devices takes "all" or a comma list of device numbers 0..${MAX_DEVICE_ORDINAL}, not ${JSON.stringify(text)}`,
        "e.g. --devices all or --devices 0,2",
      );
    }
    if (devices.includes(n)) throw new FlashAttnError("USAGE", `--devices names device ${n} twice`);
    devices.push(n);
  }
  return devices;
}
