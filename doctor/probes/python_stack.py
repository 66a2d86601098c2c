"""Facts about the Python attention stack, printed as one JSON object on the last line of stdout.

Run by doctor/probes/python.ts as a subprocess with a deadline. It only observes: every import is guarded, a
failing import is recorded with its last line (and the undefined symbol, if the loader named one) instead of
raising, and nothing is installed or compiled. Standard library only, Python 3.8+.
"""
import importlib
import importlib.util
import json
import re
import sys
import traceback

try:
    from importlib import metadata
except ImportError:  # Python < 3.8
    metadata = None

UNDEFINED_SYMBOL = re.compile(r"undefined symbol: (\S+)")


def dist_version(*names):
    """Version of the first installed distribution among names, and that distribution's direct_url.json url."""
    if metadata is None:
        return None, None
    for name in names:
        try:
            dist = metadata.distribution(name)
        except Exception:
            continue
        url = None
        try:
            direct = dist.read_text("direct_url.json")
            if direct:
                url = json.loads(direct).get("url")
        except Exception:
            pass
        return dist.version, url
    return None, None


def try_import(module):
    """(module or None, facts about the attempt)."""
    try:
        return importlib.import_module(module), {"importable": True}
    except BaseException as error:  # a broken extension can raise anything, even SystemExit
        text = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()
        last = text[-1] if text else type(error).__name__
        facts = {"importable": False, "import_error": last[:500]}
        symbol = UNDEFINED_SYMBOL.search(str(error))
        if symbol:
            facts["undefined_symbol"] = symbol.group(1)
        missing = getattr(error, "name", None) if isinstance(error, ImportError) else None
        if isinstance(missing, str) and missing:
            facts["missing_module"] = missing
        return None, facts


def module_facts(module, *dists):
    version, url = dist_version(*dists)
    facts = {"installed": version is not None}
    if version is not None:
        facts["version"] = version
    if url:
        facts["wheel_url"] = url
    if version is None and importlib.util.find_spec(module) is None:
        return None, facts
    loaded, imported = try_import(module)
    facts.update(imported)
    facts["installed"] = True
    if loaded is not None and "version" not in facts:
        found = getattr(loaded, "__version__", None)
        if isinstance(found, str):
            facts["version"] = found
    return loaded, facts


def torch_facts():
    torch, facts = module_facts("torch", "torch")
    if torch is None:
        return facts
    facts["version"] = str(getattr(torch, "__version__", facts.get("version")))
    version = getattr(torch, "version", None)
    facts["cuda"] = getattr(version, "cuda", None)
    facts["hip"] = getattr(version, "hip", None)
    try:
        facts["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception:
        pass
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["device_count"] = int(torch.cuda.device_count()) if facts["cuda_available"] else 0
        facts["arch_list"] = list(torch.cuda.get_arch_list()) if facts["cuda_available"] else []
        devices = []
        for index in range(facts["device_count"]):
            major, minor = torch.cuda.get_device_capability(index)
            device = {"name": torch.cuda.get_device_name(index), "capability": "%d.%d" % (major, minor)}
            arch = getattr(torch.cuda.get_device_properties(index), "gcnArchName", None)
            if facts["hip"] and arch:
                device["gcn_arch_name"] = arch
            devices.append(device)
        facts["devices"] = devices
    except BaseException as error:
        facts["cuda_error"] = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    return facts


def transformers_facts():
    transformers, facts = module_facts("transformers", "transformers")
    if transformers is None:
        return facts
    try:
        utils = importlib.import_module("transformers.utils")
        for key, function in (("flash_attn_2_available", "is_flash_attn_2_available"),
                              ("sdpa_available", "is_torch_sdpa_available")):
            if hasattr(utils, function):
                facts[key] = bool(getattr(utils, function)())
    except BaseException:
        pass
    return facts


# What models and training code import from flash_attn beyond the attention functions: the rotary embedding (needs
# triton and einops), the fused RMS norm (needs the dropout_layer_norm extension), the triton layer norm / RMS norm.
FLASH_ATTN_MODULES = ("flash_attn.layers.rotary", "flash_attn.ops.rms_norm", "flash_attn.ops.triton.layer_norm")


def flash_attn_modules():
    """Each module people import from flash_attn, imported as they do it, with the real failure."""
    found = []
    for module in FLASH_ATTN_MODULES:
        facts = try_import(module)[1]
        facts.pop("undefined_symbol", None)
        facts["module"] = module
        found.append(facts)
    return found


def main():
    report = {
        "status": "ok",
        "executable": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "torch": torch_facts(),
    }
    # flash_attn needs torch imported first (it links against libc10/libtorch); torch_facts() has done that.
    report["flash_attn"] = module_facts("flash_attn", "flash_attn", "flash-attn")[1]
    if report["flash_attn"].get("importable"):
        report["flash_attn_modules"] = flash_attn_modules()
    report["einops"] = module_facts("einops", "einops")[1]
    report["flash_attn_3"] = module_facts("flash_attn_3", "flash_attn_3", "flash-attn-3")[1]
    report["rotary"] = module_facts("rotary_emb", "rotary_emb")[1]
    report["layer_norm"] = module_facts("dropout_layer_norm", "dropout_layer_norm")[1]
    report["triton"] = module_facts("triton", "triton", "pytorch-triton-rocm")[1]
    report["transformers"] = transformers_facts()
    sys.stdout.write("\n" + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
