-- A template's description: free text shown beside it (the web console shows it as text).
ALTER TABLE templates ADD COLUMN description TEXT;
