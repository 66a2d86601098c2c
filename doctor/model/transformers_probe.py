"""What the installed transformers says about one model's classes, printed as one JSON object on stdout.

Run by doctor/model/probe.ts as a subprocess with a deadline, with the class names and model_type as a JSON
argument. It imports transformers' own modeling classes (no weights, and never the model's remote code) and reads
their attention flags: _supports_flash_attn (_supports_flash_attn_2 before 4.53), _supports_sdpa, _supports_flex_attn.
Standard library only besides transformers itself, Python 3.8+.
"""
import json
import sys
import traceback


def last_line(error):
    text = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


def flag(cls, *names):
    for name in names:
        value = getattr(cls, name, None)
        if isinstance(value, bool):
            return value
    return None


def main():
    request = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        import transformers
    except ImportError as error:
        return {"status": "absent", "error": "transformers not installed (%s)" % last_line(error)}
    except BaseException as error:  # a broken install can raise anything
        return {"status": "error", "error": "import transformers failed: %s" % last_line(error)}
    facts = {"status": "ok", "version": str(getattr(transformers, "__version__", "unknown")), "classes": {}}
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        facts["model_type_known"] = request.get("model_type") in CONFIG_MAPPING_NAMES
    except BaseException:
        pass
    try:
        from transformers.utils import is_flash_attn_2_available
        facts["flash_attn_2_available"] = bool(is_flash_attn_2_available())
    except BaseException:
        pass
    for name in request.get("classes", [])[:8]:
        entry = {"found": False}
        try:
            cls = getattr(transformers, name)
            entry["found"] = True
            for key, names in (("flash_attn_2", ("_supports_flash_attn", "_supports_flash_attn_2")),
                               ("sdpa", ("_supports_sdpa",)), ("flex", ("_supports_flex_attn",))):
                value = flag(cls, *names)
                if value is not None:
                    entry[key] = value
        except BaseException as error:
            entry["error"] = last_line(error)
        facts["classes"][name] = entry
    return facts


print(json.dumps(main()))
