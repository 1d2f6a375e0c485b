"""Which PostgreSQL functions and operators a statement may call without an admin grant.

The rule the classifier applies to every function call (FuncCall anywhere: select lists,
WHERE, FROM f(), DEFAULTs in DDL, CALL, aggregates, windows):

* a name in :data:`ALWAYS_ADMIN` (or starting with one of :data:`ADMIN_PREFIXES`) is
  ``admin`` on ``function:<schema>.<name>`` whatever its schema — files, large objects,
  other backends, configuration, replication, SQL handed over as text;
* ``nextval``/``setval``/``currval`` with a literal sequence name are ``write``/``write``/
  ``read`` on that sequence (a relation, resolved like any other); with anything else as the
  argument the sequence cannot be known: ``admin`` on the function;
* a name in :data:`SAFE_FUNCTIONS` called unqualified or as ``pg_catalog.<name>`` needs
  nothing: built-ins without side effects that read nothing beyond their arguments (math,
  strings, dates, json, arrays, aggregates, catalog introspection used by drivers);
* any other call is ``admin`` on ``function:<schema>.<name>``: for a qualified name its
  schema; for an unqualified one every schema it could resolve to — of ``pg_catalog`` and
  each schema of each possible search path (``pg_temp`` is never searched for functions),
  those that hold a function of that name when the relation catalog lists functions (all of
  them when none does: it may have been created since).

With the functions of the catalog known, an allow-listed name called unqualified is free
only as far as it is ``pg_catalog``'s: a same-named function in a schema of the path (an
overload with a better-matching signature would win) is ``admin`` on it. Without them the
built-in is assumed.

Operators are checked the same way: a built-in operator symbol, unqualified or in
``pg_catalog``, needs nothing; anything else is ``admin`` on ``operator:<schema>.<op>``.
"""

from __future__ import annotations

from pglast import ast

__all__ = [
    "ADMIN_PREFIXES",
    "ALWAYS_ADMIN",
    "SAFE_FUNCTIONS",
    "SAFE_OPERATORS",
    "SEQUENCE_FUNCTIONS",
    "always_admin",
    "is_safe",
    "literal_sequence",
    "split_identifier",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ALWAYS_ADMIN = _words(
    """
    pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_terminate_backend
    pg_cancel_backend pg_reload_conf pg_rotate_logfile set_config pg_switch_wal
    pg_notify pg_promote pg_create_restore_point pg_backup_start pg_backup_stop
    pg_import_system_collations pg_wal_replay_pause pg_wal_replay_resume
    pg_log_backend_memory_contexts pg_stat_reset pg_stat_reset_shared
    pg_stat_reset_single_table_counters pg_stat_reset_single_function_counters
    pg_stat_reset_slru pg_stat_reset_replication_slot pg_stat_reset_subscription_stats
    query_to_xml query_to_xmlschema query_to_xml_and_xmlschema table_to_xml
    table_to_xmlschema table_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema
    schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema database_to_xml
    database_to_xmlschema database_to_xml_and_xmlschema
    """
)
ADMIN_PREFIXES = (
    "lo_",
    "dblink",
    "pg_logical_",
    "pg_replication_",
    "pg_file_",
    "pg_ls_",
    "pg_read_",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "pg_stat_reset",
)

# name -> action on the sequence named by the first (literal) argument
SEQUENCE_FUNCTIONS = {"nextval": "write", "setval": "write", "currval": "read"}

_MATH = """
abs cbrt ceil ceiling degrees div exp factorial floor gcd lcm ln log log10 min_scale mod
pi power radians round scale sign sqrt trim_scale trunc width_bucket random random_normal
setseed acos acosd asin asind atan atand atan2 atan2d cos cosd cot cotd sin sind tan tand
sinh cosh tanh asinh acosh atanh erf erfc numeric_inc
"""
_STRING = """
ascii bit_length btrim char_length character_length chr concat concat_ws convert
convert_from convert_to decode encode format initcap left length lower lpad ltrim md5
normalize octet_length overlay parse_ident position quote_ident quote_literal quote_nullable
regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace
regexp_split_to_array regexp_split_to_table regexp_substr repeat replace reverse right rpad
rtrim split_part starts_with string_to_array string_to_table strpos substr substring
to_ascii to_hex translate unistr upper sha224 sha256 sha384 sha512 get_bit get_byte
set_bit set_byte bit_count crc32 crc32c casefold like_escape similar_escape
similar_to_escape unaccent text varchar bpchar char name pg_collation_for is_normalized
unicode_assigned unicode_version
"""
_TIME = """
age clock_timestamp current_date current_time current_timestamp date_add date_bin
date_part date_subtract date_trunc extract isfinite justify_days justify_hours
justify_interval localtime localtimestamp make_date make_interval make_time make_timestamp
make_timestamptz now statement_timestamp timeofday transaction_timestamp to_timestamp
to_date to_char to_number timezone overlaps
"""
_JSON_ARRAY = """
to_json to_jsonb array_to_json row_to_json json_build_array jsonb_build_array
json_build_object jsonb_build_object json_object jsonb_object json_array_elements
jsonb_array_elements json_array_elements_text jsonb_array_elements_text json_array_length
jsonb_array_length json_each jsonb_each json_each_text jsonb_each_text json_extract_path
jsonb_extract_path json_extract_path_text jsonb_extract_path_text json_object_keys
jsonb_object_keys json_populate_record jsonb_populate_record json_populate_recordset
jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset
jsonb_to_recordset json_strip_nulls jsonb_strip_nulls jsonb_set jsonb_set_lax jsonb_insert
jsonb_pretty json_typeof jsonb_typeof jsonb_path_exists jsonb_path_match jsonb_path_query
jsonb_path_query_array jsonb_path_query_first jsonb_concat jsonb_contains jsonb_exists
json_scalar json_serialize jsonb_populate_record_valid to_tsvector to_tsquery
plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline
array_append array_cat array_dims array_fill array_length array_lower array_ndims
array_position array_positions array_prepend array_remove array_replace array_sample
array_shuffle array_to_string array_upper cardinality trim_array unnest generate_series
generate_subscripts string_to_array array_reverse array_sort
"""
_AGGREGATES = """
array_agg avg bit_and bit_or bit_xor bool_and bool_or count every json_agg jsonb_agg
json_object_agg jsonb_object_agg json_agg_strict jsonb_agg_strict json_objectagg
json_arrayagg max min range_agg range_intersect_agg string_agg sum xmlagg any_value corr
covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope
regr_sxx regr_sxy regr_syy stddev stddev_pop stddev_samp variance var_pop var_samp mode
percentile_cont percentile_disc rank dense_rank percent_rank cume_dist row_number ntile lag
lead first_value last_value nth_value grouping
"""
_MISC = """
coalesce nullif greatest least num_nulls num_nonnulls gen_random_uuid uuidv4 uuidv7
uuid_extract_timestamp uuid_extract_version pg_typeof pg_column_size pg_sleep
pg_sleep_for pg_sleep_until pg_advisory_lock pg_advisory_lock_shared
pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all pg_advisory_xact_lock
pg_advisory_xact_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared
pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared current_setting
current_database current_catalog current_schema current_schemas current_user current_role
session_user user system_user version pg_backend_pid pg_postmaster_start_time
pg_conf_load_time inet_client_addr inet_client_port inet_server_addr inet_server_port
pg_current_xact_id pg_current_xact_id_if_assigned txid_current txid_current_if_assigned
pg_jit_available pg_trigger_depth pg_my_temp_schema pg_is_other_temp_schema pg_is_in_recovery
pg_encoding_to_char
pg_char_to_encoding pg_client_encoding format_type pg_get_expr pg_get_constraintdef
pg_get_indexdef pg_get_viewdef pg_get_triggerdef pg_get_functiondef pg_get_function_arguments
pg_get_function_result pg_get_function_identity_arguments pg_get_serial_sequence
pg_get_userbyid pg_get_keywords pg_get_ruledef pg_get_statisticsobjdef pg_get_partkeydef
pg_get_partition_constraintdef pg_table_is_visible pg_type_is_visible
pg_function_is_visible pg_opclass_is_visible pg_operator_is_visible pg_collation_is_visible
pg_conversion_is_visible pg_ts_config_is_visible pg_statistics_obj_is_visible
pg_index_column_has_property pg_index_has_property pg_indexam_has_property
pg_relation_size pg_total_relation_size pg_table_size pg_indexes_size pg_size_pretty
pg_size_bytes pg_relation_is_updatable pg_column_is_updatable obj_description
col_description shobj_description has_table_privilege has_column_privilege
has_any_column_privilege has_schema_privilege has_function_privilege
has_sequence_privilege has_database_privilege has_type_privilege has_language_privilege
has_parameter_privilege pg_has_role row_security_active to_regclass to_regtype
to_regtypemod to_regproc to_regprocedure to_regoper to_regoperator to_regnamespace
to_regrole to_regcollation pg_input_is_valid pg_input_error_info host hostmask masklen
netmask network broadcast family abbrev set_masklen inet_merge inet_same_family
isempty lower_inc upper_inc lower_inf upper_inf range_merge multirange int4range int8range
numrange tsrange tstzrange daterange xmlparse xmlserialize xmlelement xmlforest
xmlconcat xmlcomment xmlroot xmlexists xml_is_well_formed xml_is_well_formed_document
xml_is_well_formed_content xpath xpath_exists xmltext bool int2 int4 int8 float4 float8
numeric date time timestamp timestamptz interval uuid json jsonb bytea inet cidr macaddr
point box circle line lseg path polygon area center diameter height width radius npoints
isclosed isopen pclose popen length bound_box
"""

SAFE_FUNCTIONS = _words(_MATH + _STRING + _TIME + _JSON_ARRAY + _AGGREGATES + _MISC) - ALWAYS_ADMIN

SAFE_OPERATORS = _words(
    """
    = <> != < > <= >= + - * / % ^ || ~ ~* !~ !~* ~~ ~~* !~~ !~~* @> <@ && ? ?| ?& -> ->>
    #> #>> #- @? @@ @@@ | & # << >> @ |/ ||/ <-> -|- &< &> <<| |>> &<| |&> ?# ?- ?-| ?||
    <^ >^ ~= <<= >>= !! <% %> <<% %>> <<-> <->> ~>=~ ~<=~ ~>~ ~<~ ^@
    """
)


def always_admin(name: str) -> bool:
    """``name`` is dangerous wherever it lives (files, backends, config, SQL as text...)."""
    return name in ALWAYS_ADMIN or name.startswith(ADMIN_PREFIXES)


def is_safe(name: str) -> bool:
    """``name`` is a built-in without side effects (when it resolves to ``pg_catalog``)."""
    return name in SAFE_FUNCTIONS


def literal_sequence(args: tuple[object, ...]) -> tuple[str | None, str] | None:
    """``(schema, name)`` of ``nextval('s')``'s literal argument (a regclass name)."""
    if not args:
        return None
    arg = args[0]
    if isinstance(arg, ast.TypeCast):
        arg = arg.arg
    if not (isinstance(arg, ast.A_Const) and isinstance(arg.val, ast.String)):
        return None
    parts = split_identifier(arg.val.sval or "")
    if parts is None or not 1 <= len(parts) <= 2:
        return None
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def split_identifier(text: str) -> list[str] | None:
    """A dotted name as ``regclass`` input reads it: quoted parts keep case, others fold."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, part = i + 1, []
            while True:
                if j >= n:
                    return None
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        part.append('"')
                        j += 2
                        continue
                    break
                part.append(text[j])
                j += 1
            parts.append("".join(part))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in '."' and not text[j].isspace():
                j += 1
            if j == i:
                return None
            parts.append(text[i:j].lower())
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1
