"""GPU-only checks (skipped without CUDA): the transformers backend in bf16 on the GPU, and a bf16 DPO step."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_hf_backend_on_cuda_matches_cpu_greedy():
    from stages.core.generation.backends import Request, Sampling
    from stages.core.generation.hf_backend import HFGenerator
    from tests.helpers import TOY_MODEL

    cpu = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu")
    gpu = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cuda")
    assert gpu.describe()["device"] == "cuda"
    prompts = [tuple(cpu.tokenizer(f"start: {10 + i} a: + {i % 9 + 1} b: - 3 c: + 4\n")["input_ids"]) for i in range(8)]
    requests = [Request(p, 1, i) for i, p in enumerate(prompts)]
    greedy = Sampling(temperature=0.0, max_new_tokens=40)
    assert [o[0].token_ids for o in gpu.generate(requests, greedy)] == \
        [o[0].token_ids for o in cpu.generate(requests, greedy)]
    bf16 = HFGenerator(str(TOY_MODEL), dtype="auto", device="cuda")
    outs = bf16.generate([Request(p, 4, i) for i, p in enumerate(prompts)], Sampling(1.0, 1.0, 40))
    assert all(len(o) == 4 and all(c.finish_reason in ("stop", "length") for c in o) for o in outs)
