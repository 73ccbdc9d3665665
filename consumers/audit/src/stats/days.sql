-- GET /stats: the user's events per local day of the range.
-- $1 the user, $2 the IANA zone, $3 the first day, $4 the last day (dates).
SELECT (time AT TIME ZONE $2)::date AS day,
       count(*) FILTER (WHERE event_type = 'task.created'),
       count(*) FILTER (WHERE event_type = 'task.completed'),
       count(*) FILTER (WHERE event_type = 'reminder.sent')
  FROM audit_events
 WHERE user_id = $1
   AND event_type IN ('task.created', 'task.completed', 'reminder.sent')
   AND time >= ($3::date::timestamp AT TIME ZONE $2)
   AND time < (($4::date + 1)::timestamp AT TIME ZONE $2)
 GROUP BY 1
