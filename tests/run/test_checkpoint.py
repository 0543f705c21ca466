import numpy as np
import pytest

from pavlov.errors import PavlovError
from pavlov.run.checkpoint import atomic_write, latest_checkpoint, load_checkpoint, save_checkpoint


def test_npz_roundtrip_and_latest_pointer(tmp_path):
    q = np.arange(12, dtype=np.float64).reshape(3, 4)
    save_checkpoint(tmp_path, "step_1.npz", {"Q": q, "episode": np.int64(1)})
    save_checkpoint(tmp_path, "step_2.npz", {"Q": q * 2, "episode": np.int64(2)})
    assert latest_checkpoint(tmp_path).name == "step_2.npz"
    state = load_checkpoint(tmp_path)
    np.testing.assert_array_equal(state["Q"], q * 2)
    assert int(state["episode"]) == 2
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1.npz", "step_2.npz"]


def test_torch_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    save_checkpoint(tmp_path, "m.pt", {"w": torch.ones(3), "step": 7})
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["step"] == 7 and torch.equal(state["w"], torch.ones(3))


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_failed_checkpoint_does_not_move_latest(tmp_path):
    save_checkpoint(tmp_path, "a.npz", {"x": np.zeros(2)})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, "b.npz", {"x": np.array([object()])})
    assert latest_checkpoint(tmp_path).name == "a.npz"
    assert not (tmp_path / "b.npz").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PavlovError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="must end in"):
        save_checkpoint(tmp_path, "x.bin", {})
