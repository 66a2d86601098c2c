// The copy bandwidth of a device, measured in the same run as the decode cases it judges. The library has no timed
// copy, so this times one large device-to-device copy from TypeScript with fa_synchronize on both sides, over
// several repeats, and takes the median. The FFI call costs microseconds; the copy (256 MiB .. 1 GiB) takes
// hundreds of them on a GPU, so the overhead stays under about 1 %. Bytes counted: read + written, the way a
// device's copy bandwidth is usually quoted (an H100 reads about 3.0 TB/s by this count).
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import type { CopyBandwidth } from "./results.ts";
import { summarize } from "./stats.ts";

export function measureCopyBandwidth(backend: Backend, opts: { repeats?: number; bytes?: number } = {}): CopyBandwidth {
  const info = backend.deviceInfo(0);
  const deviceMemory = Number(info.memory_bytes ?? 0);
  // 1 GiB on a GPU (far beyond any cache), 256 MiB on the host; never more than 1/16 of the device.
  const wanted = opts.bytes ?? (backend.name === "cpu" ? 256 << 20 : 1 << 30);
  const bytes = deviceMemory > 0 ? Math.min(wanted, Math.floor(deviceMemory / 16)) : wanted;
  const repeats = opts.repeats ?? 10;
  const buffers: DeviceBuffer[] = [];
  try {
    const src = backend.alloc(bytes);
    buffers.push(src);
    const dst = backend.alloc(bytes);
    buffers.push(dst);
    backend.fill(src, 0x3c);
    backend.fill(dst, 0);
    backend.copy(dst, src, bytes); // first touch (page mapping) outside the timing
    backend.synchronize();
    const times: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      backend.copy(dst, src, bytes);
      backend.synchronize();
      times.push(performance.now() - t0);
    }
    const { medianMs } = summarize(times);
    return {
      place: backend.name,
      device: String(info.name),
      bytes,
      medianMs,
      gbps: (2 * bytes) / (medianMs * 1e-3) / 1e9,
      method:
        `median of ${repeats} fa_memcpy_d2d of ${bytes} bytes timed from TypeScript between fa_synchronize calls; read + written bytes`,
    };
  } finally {
    for (const b of buffers) backend.free(b);
  }
}
