-- The legacy machine agent's inbox on the machine "laptop", as its own code creates and fills it
-- (WAL journal mode, rows in the order the agent received them from the daemon's webhook).
PRAGMA journal_mode = WAL;
CREATE TABLE inbox (
  command_id TEXT PRIMARY KEY,
  received_at INTEGER,
  payload TEXT,
  status TEXT,
  updated_at INTEGER
);
INSERT INTO inbox VALUES
  ('tg-123456789-4411', 1770600300000,
   '{"type":"text","sessionId":"0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01","chatId":"123456789","text":"run the tests","messageId":4411}',
   'received', 1770600300000),
  ('tg-1001234567890-87', 1770600100000,
   '{"type":"text","sessionId":"7a1c3d9e-2b44-4f6a-8c0d-5e6f7a8b9c02","chatId":"-1001234567890","text":"git status","messageId":87}',
   'done', 1770600105000),
  ('tg-123456789-4409', 1770600200000,
   '["text","continue"]',
   'received', 1770600200000),
  ('tg-555-12', 1770600250000,
   '{"type":"text","sessionId":"deadbeef-0000-4000-8000-0000000000ff","chatId":555,"text":"/stop","messageId":12}',
   'received', NULL),
  ('tg-channel-3', NULL,
   '{"type":"text","chatId":"@ccr_updates","text":"ping é☕","messageId":3}',
   'done', 1770600050000),
  ('tg-123456789-4415', 1770600400000,
   '{"type":"text","sessionId":"0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01","chatId":"123456789","text":"commit it","messageId":4415}',
   'received', 1770600400000),
  ('tg-123456789-4380', 1770599000000,
   '{"type":"text","sessionId":"0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01","chatId":"123456789","text":"old"}',
   'failed', 1770599000000);
