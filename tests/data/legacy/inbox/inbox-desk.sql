-- The legacy machine agent's inbox on the machine "desk" (the default rollback journal).
CREATE TABLE inbox (
  command_id TEXT PRIMARY KEY,
  received_at INTEGER,
  payload TEXT,
  status TEXT,
  updated_at INTEGER
);
INSERT INTO inbox VALUES
  ('tg-123456789-4415', 1770600000000,
   '{"type":"text","sessionId":"0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01","chatId":"123456789","text":"commit it","messageId":4415}',
   'received', 1770600000000),
  ('tg-1001234567890-90', 1770600300000,
   '{"type":"text","sessionId":"f00dbabe-0000-4000-8000-000000000004","chatId":"-1001234567890","text":"show the diff","messageId":90}',
   'received', 1770600300000),
  ('tg-1001234567890-91', 1770600310000,
   '{"type":"text","chatId":"-1001234567890","text":"unterminated',
   'received', 1770600310000);
