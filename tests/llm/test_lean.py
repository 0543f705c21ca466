"""pavlov.llm.cpu.lean: the Llama MLP and RMSNorm with a leaner backward compute the same outputs
and gradients as the modules' own forward, and save fewer bytes for backward."""

from __future__ import annotations

import torch

from pavlov.llm.cpu.kernels import onednn_linears
from pavlov.llm.cpu.lean import lean_blocks
from pavlov.llm.models.tiny import tiny_random_lm

V = 97


def run(model, ids, lean: bool):
    """Loss, gradients by parameter name, and bytes saved for backward."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    with onednn_linears(model), lean_blocks(model, enabled=lean):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(input_ids=ids).logits
        loss = logits.log_softmax(-1)[..., 5].mean()
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), grads, sum(saved)


def test_same_outputs_and_gradients_with_fewer_saved_bytes():
    model = tiny_random_lm("llama", V, 0)
    cfg = model.config
    ids = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(0))
    lean_logits, lean_grads, lean_bytes = run(model, ids, True)
    logits, grads, plain_bytes = run(model, ids, False)
    assert torch.equal(lean_logits, logits)  # the same forward, op for op
    for name, g in grads.items():
        torch.testing.assert_close(lean_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # per token and layer: silu(gate) and the product (MLP), the normalised x twice (norms)
    tokens, layers = ids.numel(), cfg.num_hidden_layers
    fewer = tokens * layers * (2 * cfg.intermediate_size + 2 * cfg.hidden_size) * 4
    assert plain_bytes - lean_bytes >= fewer


def test_patches_only_llama_blocks_and_restores_them():
    model = tiny_random_lm("llama", V, 0)
    with lean_blocks(model) as count:
        # an MLP and two norms per layer, plus the final norm
        assert count == 3 * model.config.num_hidden_layers + 1
        assert "forward" in model.model.layers[0].mlp.__dict__
    assert "forward" not in model.model.layers[0].mlp.__dict__
    with lean_blocks(tiny_random_lm("gpt2", V, 0)) as count:
        assert count == 0
    with lean_blocks(model, enabled=False) as count:
        assert count == 0


def test_no_grad_and_bf16_take_the_modules_own_forward():
    model = tiny_random_lm("llama", V, 0)
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with lean_blocks(model):
            assert torch.equal(model(input_ids=ids).logits, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits
        with lean_blocks(model):
            assert torch.equal(model(input_ids=ids).logits, expected)


def test_a_loaded_model_keeps_the_patch_across_train_and_eval(tmp_path):
    """transformers with the `kernels` package kernelizes a from_pretrained model on every
    train()/eval() switch, which dropped the patched forwards under the training loop (the demo
    crashed on exit: 'LlamaRMSNorm' object has no attribute 'forward'): pavlov loads without."""
    from pavlov.llm.models.loading import load_causal_lm, save_model
    from pavlov.llm.models.tiny import tiny_causal_lm

    out = save_model(*tiny_causal_lm(arch="llama"), tmp_path / "m")
    model, _ = load_causal_lm(str(out))
    assert not getattr(model, "use_kernels", False)
    norm = model.model.layers[0].input_layernorm
    with lean_blocks(model):
        model.eval()
        model.train()
        assert "forward" in norm.__dict__
    assert "forward" not in norm.__dict__
    # a forward replaced inside the block (by anyone) is left alone on exit, never an error
    with lean_blocks(model):
        del norm.forward
    assert "forward" not in norm.__dict__
