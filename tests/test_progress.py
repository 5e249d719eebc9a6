from rlhf.progress import Progress


def test_progress_prints_plain_lines_without_a_terminal():
    now = [0.0]
    lines = []
    with Progress("rl", 10, every_s=30, tty=False, write=lines.append, clock=lambda: now[0]) as p:
        for step in range(10):
            now[0] += 10.0  # 10 s per step: a line every third step, and one at the end
            p.update(1, kl=0.5 + step)
    assert len(lines) == 4 and "\r" not in "".join(lines)
    assert lines[0] == "rl: 3/10 (30%), 10.00s/it, ETA 1m10s; kl 2.5"
    assert lines[-1].startswith("rl: 10/10 (100%)") and "ETA 0s" in lines[-1]
    quiet = []
    Progress("x", 5, tty=False, enabled=False, write=quiet.append).update(5)
    assert quiet == []


def test_short_generation_loops_stay_silent():
    now = [0.0]
    lines = []
    with Progress("evaluate", 4, every_s=30, tty=False, write=lines.append, clock=lambda: now[0], final_line=False) as p:
        for _ in range(4):
            now[0] += 1.0
            p.update(1)
    assert lines == []
    with Progress("evaluate", 4, every_s=30, tty=False, write=lines.append, clock=lambda: now[0], final_line=False) as p:
        for _ in range(4):
            now[0] += 20.0
            p.update(1)
    assert [x.split(",")[0] for x in lines] == ["evaluate: 2/4 (50%)", "evaluate: 4/4 (100%)"]
