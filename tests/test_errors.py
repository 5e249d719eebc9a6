from rlhf.errors import UserError, first_line


def test_first_line_of_a_message_or_the_type_name():
    assert first_line(ValueError("bad value\nTraceback details")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("  \n")) == "RuntimeError"


def test_user_errors_exit_with_code_2():
    assert UserError("x").exit_code == 2 and issubclass(UserError, Exception)
