from sievetrain.train import env


def test_the_source_revision_is_read_once_per_process(monkeypatch):
    """Records name the code the process loaded: edits to the tree during a long
    bench must not relabel the records written after them."""
    env._git_sha.cache_clear()
    calls = []
    real_run = env.subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(env.subprocess, "run", counting_run)
    try:
        first = env.environment()["git_sha"]
        made = len(calls)
        assert made >= 1  # git was asked once
        assert env.environment()["git_sha"] == first
        assert len(calls) == made  # and not again
    finally:
        env._git_sha.cache_clear()
