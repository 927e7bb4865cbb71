-- Aborts the statement that calls it when `ok` is false. Used to assert an
-- invariant inside a single autocommit statement (a CASE with a constant
-- error would be folded at plan time; a volatile function is not).
CREATE FUNCTION dbswarm_check(ok boolean, message text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'DBS01', MESSAGE = message;
    END IF;
    RETURN true;
END
$$;
