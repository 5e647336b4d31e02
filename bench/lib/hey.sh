# Reading hey's summary (sourced).
# hey_counts FILE: "ok other errors" from one hey summary: responses with status 200, responses
# with any other status, and requests that got no response (hey's error distribution). Only the
# two distribution sections are read: the latency histogram also prints counts in brackets.
hey_counts() {
  awk '
    /^Status code distribution:/ {sec = "status"; next}
    /^Error distribution:/ {sec = "error"; next}
    /^[^ \t]/ {sec = ""}
    sec == "status" && $1 ~ /^\[[0-9]+\]$/ {if ($1 == "[200]") ok += $2; else other += $2}
    sec == "error" && $1 ~ /^\[[0-9]+\]$/ {errs += substr($1, 2, length($1) - 2)}
    END {printf "%d %d %d\n", ok, other, errs}' "$1"
}
